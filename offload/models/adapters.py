"""LoRA adapters in GGUF form: what llama.cpp will accept for a base model, checked before a model is stored.

llama.cpp (src/llama-adapter.cpp) loads an adapter file when `general.type` is "adapter", `adapter.type` is "lora"
and `general.architecture` is the base model's; every tensor is `<base tensor>.lora_a` or `.lora_b` (or a
`*_norm.weight`, which it skips), both halves of each pair are present, the base has that tensor, and the shapes
line up: for a base weight of ggml shape (n_in, n_out), lora_a is (n_in, rank) and lora_b is (rank, n_out); for
`token_embd.weight` (n_embd, n_vocab), looked up by row, they are (rank, n_vocab) and (rank, n_embd).
`adapter.lora.alpha` (float) scales the update by alpha / rank; without it the scale is 1.

Checking all of that here turns a bad upload into a 400 naming the problem at `/api/create`, instead of a runner
that fails every load of the model later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from offload.errors import InvalidAdapter
from offload.models.gguf import GGUFFile, TensorInfo
from offload.models.modelfile import shown

_A, _B = ".lora_a", ".lora_b"
_SKIPPED = "_norm.weight"  # llama.cpp ignores norm vectors in adapters (no support yet)
Refuse = Callable[[str], InvalidAdapter]


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    """What `check_adapter` found, for logs and /api/show."""

    architecture: str
    alpha: float | None
    rank: int
    n_pairs: int  # base tensors the adapter changes


def check_adapter(adapter: GGUFFile, base: GGUFFile, label: str = "adapter") -> AdapterFacts:
    """Raise InvalidAdapter (param "adapters", the message starting with `label`) unless llama.cpp would load
    `adapter` onto `base`. Both were read by `read_gguf`, so their layouts are already sound."""

    def refuse(reason: str) -> InvalidAdapter:
        return InvalidAdapter(f"{label}: {reason}", param="adapters")

    meta = adapter.metadata
    kind = meta.get("general.type")
    if kind != "adapter":
        raise refuse(f'not a LoRA adapter: general.type is {shown(kind)}, expected "adapter"')
    adapter_type = meta.get("adapter.type")
    if adapter_type != "lora":
        raise refuse(f'adapter.type is {shown(adapter_type)}; only "lora" adapters are supported')
    arch = meta.get("general.architecture")
    if arch != base.architecture:
        raise refuse(f"it is for architecture {shown(arch)} but the base model is {base.architecture!r}")
    alpha = meta.get("adapter.lora.alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, float)):
        raise refuse(f"adapter.lora.alpha must be a float, got {shown(alpha)}")
    pairs = _pairs(adapter, refuse)
    if not pairs:
        raise refuse("it holds no lora_a/lora_b tensor pairs")
    base_tensors = {t.name: t for t in base.tensors}
    ranks: set[int] = set()
    for name, (a, b) in sorted(pairs.items()):
        weight = base_tensors.get(name)
        if weight is None:
            raise refuse(f"the base model has no tensor {name!r} (an adapter for another model?)")
        ranks.add(_check_shapes(name, weight, a, b, refuse))
    return AdapterFacts(
        architecture=base.architecture,
        alpha=alpha,
        rank=max(ranks),
        n_pairs=len(pairs),
    )


def _pairs(adapter: GGUFFile, fail: Refuse) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    halves: dict[str, dict[str, TensorInfo]] = {}
    for tensor in adapter.tensors:
        name = tensor.name
        if name.endswith(_A) or name.endswith(_B):
            halves.setdefault(name[: -len(_A)], {})[name[-len(_A) :]] = tensor
        elif not name.endswith(_SKIPPED):
            raise fail(f"tensor {name!r} is neither a .lora_a nor a .lora_b tensor")
    pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for base_name, found in halves.items():
        if _A not in found or _B not in found:
            missing = _B if _A in found else _A
            raise fail(f"tensor {base_name + missing!r} is missing (lora_a and lora_b come in pairs)")
        pairs[base_name] = (found[_A], found[_B])
    return pairs


def _check_shapes(name: str, weight: TensorInfo, a: TensorInfo, b: TensorInfo, fail: Refuse) -> int:
    """The rank of the pair; raises `fail(...)` when the shapes do not fit `weight` as llama.cpp needs."""
    if len(weight.shape) < 2 or len(a.shape) != 2 or len(b.shape) != 2:
        raise fail(f"tensor {name!r}: LoRA pairs must be 2-dimensional and adapt a 2-dimensional weight")
    n_in, n_out = weight.shape[0], weight.shape[1]
    if name.endswith("token_embd.weight"):
        # The embedding lookup uses the pair the other way round (llama.cpp's llm_build_inp_embd).
        fits = b.shape[1] == n_in and a.shape[1] == n_out and a.shape[0] == b.shape[0]
        rank = b.shape[0]
    else:
        fits = a.shape[0] == n_in and b.shape[1] == n_out and a.shape[1] == b.shape[0]
        rank = a.shape[1]
    if not fits:
        raise fail(
            f"tensor {name!r}: lora_a {a.shape} and lora_b {b.shape} do not fit the base weight {weight.shape} "
            "(an adapter for another model size?)"
        )
    return rank
