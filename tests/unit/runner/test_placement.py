"""Reading llama.cpp's own load report: layers per device, offload count, buffers per device."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.runner.placement import MIB, device_of, is_gpu_device, parse_load_log

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
