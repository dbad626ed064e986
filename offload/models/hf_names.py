"""Which pull names mean a Hugging Face repository, and what they ask for.

    hf.co/ORG/REPO[:QUANT]            as Ollama spells Hugging Face pulls
    huggingface.co/ORG/REPO[:QUANT]   the same
    ORG/REPO[:QUANT]                  a bare repository id (offload pulls from no other registry)

The tag is the quantization (`Q4_K_M`, `q8_0`, `UD-Q4_K_XL`; matched case-insensitively); no tag, or `latest`,
lets offload choose (hf_select). The model is stored under the name as given, normalized by names.py (lowercase,
tag `latest` when none), as Ollama stores its own `hf.co/...` pulls: what you pulled is what you run. The repository
id keeps the case it was typed in, for the hub's URLs.
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.models.names import DEFAULT_TAG, ModelName, parse_name

HUB_HOSTS = frozenset({"hf.co", "huggingface.co"})


@dataclass(frozen=True, slots=True)
class HubRef:
    """A validated Hugging Face pull: the repository, the quantization asked for, and the store name."""

    repo_id: str  # "ORG/REPO" as typed
    quant: str | None  # the tag as typed; None when offload chooses
    name: ModelName  # what the model is stored as

    @property
    def display(self) -> str:
        """The repository as users know it on the hub: `hf.co/ORG/REPO`."""
        return f"hf.co/{self.repo_id}"


def parse_hub_name(text: str) -> HubRef | None:
    """The Hugging Face repository `text` names, or None when it names none (a one-part name such as `llama3:8b`,
    or another registry's host). Raises InvalidName for a name the store could not hold."""
    name = parse_name(text)  # validates every part before we split it ourselves
    path, tag = text, None
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        path, tag = text[:colon], text[colon + 1 :]
    parts = path.split("/")
    if len(parts) == 3 and parts[0].lower() in HUB_HOSTS:
        repo_id = f"{parts[1]}/{parts[2]}"
    elif len(parts) == 2:
        repo_id = path
    else:
        return None
    quant = tag if tag is not None and tag.lower() != DEFAULT_TAG else None
    return HubRef(repo_id=repo_id, quant=quant, name=name)
