"""GPU memory this process holds, from NVML (what the driver says, not what llama.cpp thinks it allocated)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any


def process_gpu_memory(pid: int) -> int | None:
    """Bytes of GPU memory used by `pid` over all NVIDIA devices; None when NVML is missing or cannot say."""
    try:
        nvml: Any = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, no driver: nothing to report
        return None
    try:
        total = 0
        found = False
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    total += int(process.usedGpuMemory)
                    found = True
        return total if found else None
    except Exception:  # NVML errors are many and typed per call; any of them means "cannot say"
        return None
    finally:
        with contextlib.suppress(Exception):  # shutting down after a failure is best effort
            nvml.nvmlShutdown()
