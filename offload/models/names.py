"""Ollama-style model names and blob digests, validated before anything touches a path.

A name is `[host/][namespace/]model[:tag]`; missing parts default to `registry.ollama.ai`, `library`
and `latest`. Names are case-insensitive: every part is normalized to lowercase, so two spellings never
map to two manifests (and case-insensitive file systems cannot disagree with us).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from offload.errors import InvalidDigest, InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 256

# A part starts with a letter, digit or `_`, so "." and ".." can never be a path component.
_PART = re.compile(r"[a-z0-9_][a-z0-9_.-]*")
_HOST = re.compile(r"[a-z0-9_][a-z0-9_.-]*(?::[0-9]{1,5})?")
_TAG = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ModelName:
    """A validated, lowercase model name. Build one with `parse_name`, which checks every part."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The shortest spelling Ollama would show: `gemma3:270m`, `ns/model:tag`, `host/ns/model:tag`."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.display


def parse_name(text: str) -> ModelName:
    """Parse and validate a model name; raises `InvalidName` with a message naming the broken rule."""
    if not isinstance(text, str):
        raise InvalidName("model name must be a string", param="model")
    if not text:
        raise InvalidName("model name must not be empty", param="model")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidName(f"model name is longer than {MAX_NAME_LENGTH} characters", param="model")
    if "\x00" in text:
        raise InvalidName("model name must not contain NUL", param="model")
    if "\\" in text:
        raise InvalidName(f"model name {text!r} must not contain a backslash", param="model")
    if text.startswith("/"):
        raise InvalidName(f"model name {text!r} must not start with '/'", param="model")
    if ".." in text:
        raise InvalidName(f"model name {text!r} must not contain '..'", param="model")
    lowered = text.lower()

    # The tag is after the last ':' that follows the last '/'; an earlier ':' belongs to a host port.
    path, tag = lowered, DEFAULT_TAG
    colon = lowered.rfind(":")
    if colon > lowered.rfind("/"):
        path, tag = lowered[:colon], lowered[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidName(
                f"model name {text!r}: tag must be 1-128 of a-z 0-9 _ . - and not start with . or -",
                param="model",
            )

    parts = path.split("/")
    if len(parts) > 3:
        raise InvalidName(f"model name {text!r} has more than host/namespace/model", param="model")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts

    if len(parts) == 3 and not _HOST.fullmatch(host):
        raise InvalidName(
            f"model name {text!r}: host must be a-z 0-9 _ . - with an optional :port", param="model"
        )
    for label, part in (("namespace", namespace), ("model", model)):
        if not _PART.fullmatch(part):
            raise InvalidName(
                f"model name {text!r}: {label} must be a-z 0-9 _ . - and not start with . or -",
                param="model",
            )
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def validate_digest(digest: str) -> str:
    """Return `sha256:<64 lowercase hex>`; `sha256-<hex>` (the blob file spelling) is accepted too.

    Raises `InvalidDigest` for anything else, so a digest is safe to put in a file name afterwards.
    """
    if not isinstance(digest, str):
        raise InvalidDigest("digest must be a string", param="digest")
    for prefix in ("sha256:", "sha256-"):
        if digest.startswith(prefix) and _HEX64.fullmatch(digest[len(prefix) :]):
            return "sha256:" + digest[len(prefix) :]
    shown = digest[:80] + ("..." if len(digest) > 80 else "")
    raise InvalidDigest(
        f"invalid digest {shown!r}: expected sha256:<64 lowercase hex digits>", param="digest"
    )
