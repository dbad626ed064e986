"""Reading llama.cpp's own load report: layers per device, offload count, buffers per device."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.runner.placement import MIB, allocation_failed, device_of, is_gpu_device, parse_load_log, parse_oom

LOGS = Path(__file__).resolve().parents[2] / "fixtures" / "load_logs"

# The shape of a CUDA load as llama.cpp prints it (layer lines, offload count, buffers per device).
CUDA_PARTIAL = """\
load_tensors: layer   0 assigned to device CPU, is_swa = 0
load_tensors: layer   1 assigned to device CUDA0, is_swa = 0
load_tensors: layer   2 assigned to device CUDA0, is_swa = 0
load_tensors: layer   3 assigned to device CUDA1, is_swa = 0
load_tensors: layer   4 assigned to device CUDA1, is_swa = 0
load_tensors: offloading 4 repeating layers to GPU
load_tensors: offloaded 4/5 layers to GPU
load_tensors:        CUDA0 model buffer size =   100.00 MiB
load_tensors:        CUDA1 model buffer size =    50.50 MiB
load_tensors:   CPU_Mapped model buffer size =    20.00 MiB
llama_kv_cache:      CUDA0 KV buffer size =    16.00 MiB
llama_kv_cache:      CUDA1 KV buffer size =    16.00 MiB
llama_context:      CUDA0 compute buffer size =    64.00 MiB
llama_context:  CUDA_Host compute buffer size =     8.00 MiB
"""


def test_cpu_load_of_the_starter_model() -> None:
    report = parse_load_log((LOGS / "cpu_gemma3_270m.txt").read_text())
    assert report.layers == {"CPU": 19}
    assert report.layers_total == 19
    assert report.layers_on_gpu == 0
    assert report.offloaded is None
    assert report.verified
    cpu = report.buffers["CPU"]
    assert cpu["model"] == round(235.16 * MIB) + round(12.66 * MIB)  # mapped weights + repacked weights
    assert cpu["KV"] == 72 * MIB  # the non-SWA and the SWA cache


def test_split_over_two_gpus_and_the_cpu() -> None:
    report = parse_load_log(CUDA_PARTIAL)
    assert report.layers == {"CPU": 1, "CUDA0": 2, "CUDA1": 2}
    assert report.layers_on_gpu == 4
    assert report.offloaded == (4, 5)
    assert report.verified
    assert report.bytes_on("CUDA0") == (100 + 16 + 64) * MIB
    assert report.bytes_on("CPU") == (20 + 8) * MIB  # CUDA_Host is pinned system memory
    devices = report.to_json()["devices"]
    assert [d["name"] for d in devices] == ["CUDA0", "CUDA1", "CPU"]


def test_offload_count_that_disagrees_is_not_verified() -> None:
    text = CUDA_PARTIAL.replace("offloaded 4/5 layers", "offloaded 5/5 layers")
    assert not parse_load_log(text).verified


def test_no_report_is_not_verified() -> None:
    report = parse_load_log("llama_model_loader: loaded meta data\n")
    assert report.layers == {}
    assert not report.verified
    assert report.layers_total == 0


@pytest.mark.parametrize(
    ("buffer", "device"),
    [("CPU", "CPU"), ("CPU_Mapped", "CPU"), ("CPU_REPACK", "CPU"), ("CUDA0", "CUDA0"), ("CUDA_Host", "CPU"),
     ("Vulkan0", "Vulkan0"), ("ROCm0", "ROCm0"), ("Metal", "Metal")],
)
def test_device_of_buffer(buffer: str, device: str) -> None:
    assert device_of(buffer) == device


def test_real_cuda_load_on_the_gpu_machine() -> None:
    # Captured on an H200 (scripts/gpu_truth.sh, docs/GPU.md): a 1B-shaped llama, every layer on CUDA0.
    report = parse_load_log((LOGS / "cuda_h200_llama1b.txt").read_text())
    assert report.layers == {"CUDA0": 17}
    assert report.offloaded == (17, 17)
    assert report.verified
    assert report.buffers["CUDA0"] == {
        "model": round(608.59 * MIB), "KV": 128 * MIB, "compute": round(66.50 * MIB)
    }
    assert report.bytes_on("CPU") == round(35.16 * MIB) + round(0.12 * MIB) + round(12.01 * MIB)


def test_amx_buffers_are_host_memory() -> None:
    # A CPU build on a Xeon with AMX repacks weights into an "AMX" buffer (seen on the GPU machine): not a GPU.
    report = parse_load_log(
        "load_tensors: layer   0 assigned to device CPU, is_swa = 0\n"
        "load_tensors:          AMX model buffer size =   620.71 MiB\n"
        "load_tensors:   CPU_Mapped model buffer size =   583.48 MiB\n"
    )
    assert report.layers_on_gpu == 0
    assert [d["name"] for d in report.to_json()["devices"]] == ["AMX", "CPU"]
    assert not is_gpu_device("AMX")
    assert is_gpu_device("CUDA0")
    assert is_gpu_device("Vulkan1")


# ---- failed allocations -------------------------------------------------------------------------------------------
# Each line is in the format of the llama.cpp source that prints it (see placement.py); where a case is a real log,
# it says so. ggml prints "%.2f MiB": those sizes are the MiB converted; a byte count is taken as printed.


def cuda_malloc(mib: str, device: int = 0) -> str:
    """ggml-cuda.cu's line for a cudaMalloc that failed."""
    return (
        f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {mib} MiB on device {device}: "
        "cudaMalloc failed: out of memory\n"
    )


def named(buffer: str, size: int, where: str = "alloc_tensor_range") -> str:
    """ggml-alloc.c's line naming the buffer type it could not allocate, with the exact size."""
    return f"{where}: failed to allocate {buffer} buffer of size {size}\n"


KV_CACHE_FAILED = "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache\n"
OOM_CASES: list[tuple[str, str, tuple[str, int] | None]] = [
    ("cuda malloc alone", cuda_malloc("4403.48"), ("CUDA0", round(4403.48 * MIB))),
    ("cuda device index", cuda_malloc("4403.48", 3), ("CUDA3", round(4403.48 * MIB))),
    (
        "cuda malloc then the weights' exact size",
        cuda_malloc("4403.48") + named("CUDA0", 4617387008)
        + "llama_model_load: error loading model: unable to allocate CUDA0 buffer\n",
        ("CUDA0", 4617387008),
    ),
    ("weights, exact size alone", named("CUDA0", 4617387008), ("CUDA0", 4617387008)),
    (
        "compute buffer (graph allocator, b6xxx name)",
        named("CUDA0", 1234567, "ggml_gallocr_reserve_n") + "graph_reserve: failed to allocate compute buffers\n",
        ("CUDA0", 1234567),
    ),
    (
        # A real ROCm log: ggml-cuda.cu says "device 0", the allocator names it ROCm0.
        "rocm names the device its own way",
        cuda_malloc("260.02") + named("ROCm0", 272646272, "ggml_gallocr_reserve_n_impl")
        + "graph_reserve: failed to allocate compute buffers\n"
        "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers\n",
        ("ROCm0", 272646272),
    ),
    (
        "kv cache on cuda",
        cuda_malloc("1024.00", 1) + named("CUDA1", 1 << 30)
        + "llama_kv_cache: failed to allocate buffer for kv cache\n" + KV_CACHE_FAILED,
        ("CUDA1", 1 << 30),
    ),
    (
        "cpu, only ggml's malloc",
        "ggml_aligned_malloc: insufficient memory (attempted to allocate 1536.00 MB)\n",
        ("CPU", 1536 * MIB),
    ),
    (
        "cpu, small size padded",
        "ggml_aligned_malloc: insufficient memory (attempted to allocate  12.50 MB)\n",
        ("CPU", round(12.5 * MIB)),
    ),
    (
        "cpu buffer type's exact size",
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 1610612736\n",
        ("CPU", 1610612736),
    ),
    ("a gpu backend's host buffer is system memory", named("CUDA_Host", 4096), ("CPU", 4096)),
    (
        # A real Vulkan log: the size comes first, the device on the allocator's line.
        "vulkan",
        "ggml_vulkan: Device memory allocation of size 1632174080 failed.\n"
        "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory\n"
        + named("Vulkan0", 1632174080) + KV_CACHE_FAILED,
        ("Vulkan0", 1632174080),
    ),
    (
        "the first failure, not a later one",
        cuda_malloc("4403.48") + named("CUDA0", 4617387008) + cuda_malloc("10.00", 1) + named("CUDA1", 10 * MIB),
        ("CUDA0", 4617387008),
    ),
    (
        # The graph allocator reports the whole buffer; the chunk cudaMalloc refused is the allocation that failed.
        "a chunk of a larger compute buffer",
        cuda_malloc("2048.00") + named("CUDA0", 3 << 30, "ggml_gallocr_reserve_n"),
        ("CUDA0", 2048 * MIB),
    ),
    # llama.cpp's own lines name no size (or no device): an allocation failed, but parse_oom cannot say which.
    ("vulkan size without a device", "ggml_vulkan: Device memory allocation of size 1632174080 failed.\n", None),
    ("model loader only", "llama_model_load: error loading model: unable to allocate CUDA0 buffer\n", None),
    ("kv cache only", "llama_kv_cache: failed to allocate buffer for kv cache\n", None),
    ("compute buffers only", "graph_reserve: failed to allocate compute buffers\n", None),
    ("compute pp buffers only", "llama_init_from_model: failed to allocate compute pp buffers\n", None),
    ("old model loader", "llama_model_load: error loading model: unable to allocate backend buffer\n", None),
]
NOT_OOM = [
    ("empty", ""),
    ("a successful cpu load", (LOGS / "cpu_gemma3_270m.txt").read_text()),
    ("a successful cuda load", (LOGS / "cuda_h200_llama1b.txt").read_text()),
    # Pinned host memory that cannot be had is not a failure: ggml falls back to pageable memory and loads.
    ("pinned memory fallback", "ggml_cuda_host_malloc: failed to allocate 512.00 MiB of pinned memory: out of memory"),
    ("vulkan pinned memory fallback", "WARNING: failed to allocate 512.00 MB of pinned memory"),
    ("a k-shift during decode", "llama_kv_cache: failed to allocate compute graph for K-shift"),
    ("another load error", "llama_model_load: error loading model: unknown model architecture: 'nonsense'"),
    ("bad alignment is not memory", "ggml_aligned_malloc: invalid alignment value (attempted to allocate 12.00 MB)"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in OOM_CASES], ids=[c[0] for c in OOM_CASES])
def test_parse_oom(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_oom(text) == expected
    assert allocation_failed(text)  # every case above reports a failed allocation, with or without numbers


@pytest.mark.parametrize("text", [t for _, t in NOT_OOM], ids=[c[0] for c in NOT_OOM])
def test_no_failed_allocation(text: str) -> None:
    assert parse_oom(text) is None
    assert not allocation_failed(text)


def test_synthetic_cuda_oom_fixture() -> None:
    # Assembled from the source's formats (the file says so): a load whose second GPU cannot hold its weights.
    text = (LOGS / "cuda_oom_synthetic.txt").read_text()
    assert parse_oom(text) == ("CUDA1", 4617387008)
    assert parse_load_log(text).layers == {"CPU": 1, "CUDA0": 2, "CUDA1": 2}  # the rest of the log still reads


def test_captured_cpu_oom_fixture() -> None:
    # Captured from llama.cpp itself (the file says how): the KV cache of a 16-sequence context did not fit.
    assert parse_oom((LOGS / "cpu_oom_kv_cache.txt").read_text()) == ("CPU", 1610612736)
