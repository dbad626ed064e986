"""What a pull reports as it goes: Ollama's pull status lines. Apart from hf_pull so that the API, which reports
the starter's pull too, need not import huggingface_hub until a Hugging Face pull is asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PullStatus:
    """One of Ollama's pull status lines."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


Report = Callable[[PullStatus], None]
