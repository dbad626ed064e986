"""hf_names: which pull names are Hugging Face repositories, the quantization they ask for, the store name."""

from __future__ import annotations

import pytest

from offload.errors import InvalidName
from offload.models.hf_names import parse_hub_name


@pytest.mark.parametrize(
    ("text", "repo_id", "quant", "stored"),
    [
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "bartowski/Llama-3.2-1B-Instruct-GGUF", None,
         "hf.co/bartowski/llama-3.2-1b-instruct-gguf:latest"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q8_0",
         "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q8_0"),
        ("HF.CO/org/repo:q4_k_m", "org/repo", "q4_k_m", "hf.co/org/repo:q4_k_m"),
        ("huggingface.co/org/repo", "org/repo", None, "huggingface.co/org/repo:latest"),
        ("huggingface.co/org/repo:UD-Q4_K_XL", "org/repo", "UD-Q4_K_XL", "huggingface.co/org/repo:ud-q4_k_xl"),
        ("Org/Repo-GGUF", "Org/Repo-GGUF", None, "org/repo-gguf:latest"),
        ("org/repo:latest", "org/repo", None, "org/repo:latest"),
        ("org/repo:LATEST", "org/repo", None, "org/repo:latest"),
        ("org/repo:IQ4_XS", "org/repo", "IQ4_XS", "org/repo:iq4_xs"),
    ],
)
def test_hub_names(text: str, repo_id: str, quant: str | None, stored: str) -> None:
    ref = parse_hub_name(text)
    assert ref is not None
    assert (ref.repo_id, ref.quant, str(ref.name)) == (repo_id, quant, stored)
    assert ref.display == f"hf.co/{repo_id}"


@pytest.mark.parametrize("text", ["gemma3:270m", "llama3", "registry.ollama.ai/library/llama3:8b", "example.com/a/b"])
def test_names_of_no_hub(text: str) -> None:
    assert parse_hub_name(text) is None


@pytest.mark.parametrize("text", ["hf.co/org/../x", "org/repo:-bad", "/org/repo", "a/b/c/d", "org/re po"])
def test_invalid_names_raise(text: str) -> None:
    with pytest.raises(InvalidName):
        parse_hub_name(text)
