"""models/adapters.py: what llama.cpp would refuse is refused first, with the reason; what it loads passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from offload.errors import InvalidAdapter
from offload.models.adapters import check_adapter
from offload.models.gguf import read_gguf
from offload.planner.lora import with_adapters
from offload.planner.memory import model_memory
from tests.fixtures.gguf_files import N_EMBD, write_tiny_gguf
from tests.fixtures.lora import write_lora


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "base.gguf")


def test_a_lora_for_the_base_passes(base: Path, tmp_path: Path) -> None:
    adapter = write_lora(tmp_path / "lora.gguf", base, rank=2, alpha=4.0)
    facts = check_adapter(read_gguf(adapter), read_gguf(base))
    assert (facts.architecture, facts.alpha, facts.rank, facts.n_pairs) == ("llama", 4.0, 2, 7)


def test_alpha_is_optional_and_norm_vectors_are_skipped(base: Path, tmp_path: Path) -> None:
    norm = {"blk.0.attn_norm.weight": np.ones(N_EMBD, dtype=np.float32)}
    adapter = write_lora(tmp_path / "lora.gguf", base, alpha=None, extra_tensors=norm)
    assert check_adapter(read_gguf(adapter), read_gguf(base)).alpha is None


def test_an_adapter_of_the_embedding_uses_the_swapped_shapes(base: Path, tmp_path: Path) -> None:
    n_vocab = 32
    swapped = {
        "token_embd.weight.lora_a": np.zeros((n_vocab, 2), dtype=np.float32),  # ggml (rank, n_vocab)
        "token_embd.weight.lora_b": np.zeros((N_EMBD, 2), dtype=np.float32),  # ggml (rank, n_embd)
    }
    adapter = write_lora(tmp_path / "lora.gguf", base, targets=(), extra_tensors=swapped)
    assert check_adapter(read_gguf(adapter), read_gguf(base)).n_pairs == 1


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"architecture": "gemma3"}, "architecture 'gemma3' but the base model is 'llama'"),
        ({"metadata": {"general.type": "model"}}, "not a LoRA adapter: general.type is 'model'"),
        ({"metadata": {"general.type": None}}, "not a LoRA adapter: general.type is None"),
        ({"metadata": {"adapter.type": "control_vector"}}, "adapter.type is 'control_vector'"),
        ({"alpha": None, "metadata": {"adapter.lora.alpha": 8}}, "adapter.lora.alpha must be a float"),
        ({"targets": ()}, "no lora_a/lora_b tensor pairs"),
        ({"skip": ("b",)}, "'blk.0.attn_q.weight.lora_b' is missing"),
        ({"skip": ("a",)}, "'blk.0.attn_q.weight.lora_a' is missing"),
        ({"bad_shape": True}, "do not fit the base weight"),
        (
            {"extra_tensors": {"blk.0.attn_q.weight.delta": np.zeros((2, 2), dtype=np.float32)}},
            "neither a .lora_a nor a .lora_b tensor",
        ),
        (
            {
                "extra_tensors": {
                    "blk.7.attn_q.weight.lora_a": np.zeros((2, N_EMBD), dtype=np.float32),
                    "blk.7.attn_q.weight.lora_b": np.zeros((N_EMBD, 2), dtype=np.float32),
                }
            },
            "the base model has no tensor 'blk.7.attn_q.weight'",
        ),
    ],
)
def test_refusals_say_why(base: Path, tmp_path: Path, options: dict[str, Any], reason: str) -> None:
    adapter = write_lora(tmp_path / "lora.gguf", base, **options)
    with pytest.raises(InvalidAdapter) as caught:
        check_adapter(read_gguf(adapter), read_gguf(base), label="adapter x")
    assert caught.value.message.startswith("adapter x: ")
    assert reason in caught.value.message
    assert caught.value.param == "adapters"
    assert caught.value.status == 400


def test_an_adapter_for_another_size_of_the_same_architecture(tmp_path: Path) -> None:
    small = write_tiny_gguf(tmp_path / "small.gguf")
    big = write_tiny_gguf(tmp_path / "big.gguf", n_tokens=64)  # another output shape: output.weight differs
    adapter = write_lora(tmp_path / "lora.gguf", big, targets=(), extra_tensors={
        "output.weight.lora_a": np.zeros((2, N_EMBD), dtype=np.float32),
        "output.weight.lora_b": np.zeros((64, 2), dtype=np.float32),
    })
    check_adapter(read_gguf(adapter), read_gguf(big))
    with pytest.raises(InvalidAdapter, match="do not fit the base weight"):
        check_adapter(read_gguf(adapter), read_gguf(small))


def test_the_plan_counts_adapter_tensors_in_their_layers(base: Path, tmp_path: Path) -> None:
    adapter = write_lora(tmp_path / "lora.gguf", base, rank=2, targets=("attn_q",), extra_tensors={
        "output.weight.lora_a": np.zeros((2, N_EMBD), dtype=np.float32),
        "output.weight.lora_b": np.zeros((32, 2), dtype=np.float32),
    })
    memory = model_memory(read_gguf(base))
    added = with_adapters(memory, [read_gguf(adapter)])
    pair = (2 * N_EMBD + N_EMBD * 2) * 4
    assert added.block_bytes[0] == memory.block_bytes[0] + pair
    assert added.other_bytes == memory.other_bytes + (2 * N_EMBD + 32 * 2) * 4
    assert added.weight_bytes == memory.weight_bytes + sum(t.n_bytes for t in read_gguf(adapter).tensors)
    assert with_adapters(memory, []) is memory
