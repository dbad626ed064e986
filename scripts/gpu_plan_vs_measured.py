"""Predicted vs measured GPU memory: `offload plan --json` against what the runner reports after a real load
(llama.cpp's own buffer sizes per device, and the process's GPU memory from NVML).

On the GPU machine, with a server already running on $OFFLOAD_HOST (started with OFFLOAD_NUM_PARALLEL=P) and the
models in its store:
    python3 scripts/gpu_plan_vs_measured.py MODEL[,MODEL...] CTX[,CTX...] P [--header]  > table.md
Prints one markdown row per (model, context). The prediction is the plan's total per GPU: llama.cpp's buffers plus
the per-process overhead (CUDA context); NVML's per-process number is what it is compared with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

MIB = 1 << 20


def predicted(model: str, ctx: int, parallel: int) -> tuple[dict[str, int], dict[str, int], int]:
    """(total per device, buffers per device, GPU layers) from `offload plan --json`."""
    out = subprocess.run(
        [sys.executable, "-m", "offload", "plan", model, "--ctx", str(ctx), "--parallel", str(parallel), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    plan = json.loads(out)
    totals = {d["name"]: int(d["total"]) for d in plan["devices"]}
    buffers = {d["name"]: int(d["total"]) - int(d.get("overhead", 0)) for d in plan["devices"]}
    return totals, buffers, int(plan["n_gpu_layers"])


def measured(base: str, model: str, ctx: int) -> tuple[dict[str, int], int | None, int]:
    reply = httpx.post(
        base + "/api/generate",
        json={"model": model, "prompt": "hi", "raw": True, "stream": False, "keep_alive": "10m",
              "options": {"num_ctx": ctx, "num_predict": 1}},
        timeout=600,
    )
    reply.raise_for_status()
    for entry in httpx.get(base + "/api/ps", timeout=30).json()["models"]:
        if entry["name"] == model:
            placement = entry["offload"]
            buffers = {d["name"]: sum(d["buffers"].values()) for d in placement["devices"]}
            return buffers, placement.get("gpu_memory"), int(placement["layers_on_gpu"])
    raise RuntimeError(f"{model} is not loaded")


def main(models: list[str], contexts: list[int], parallel: int, header: bool) -> int:
    host = os.environ.get("OFFLOAD_HOST", "127.0.0.1:11434")
    base = host if host.startswith("http") else f"http://{host}"
    if header:
        print("| model | n_ctx | parallel | layers on GPU (plan / real) | GPU predicted MiB (with overhead) "
              "| NVML process MiB | NVML / predicted | GPU buffers predicted MiB | GPU buffers MiB (llama.cpp) "
              "| buffers ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in models:
        for ctx in contexts:
            totals, buffers, plan_layers = predicted(model, ctx, parallel)
            real, nvml, layers = measured(base, model, ctx)
            gpu = next((name for name in totals if name.startswith("CUDA")), "CUDA0")
            ratio = real.get(gpu, 0) / buffers[gpu] if buffers.get(gpu) else float("nan")
            nvml_ratio = f"{nvml / totals[gpu]:.3f}" if nvml is not None and totals.get(gpu) else "n/a"
            nvml_text = f"{nvml / MIB:.0f}" if nvml is not None else "n/a"
            print(
                f"| {model} | {ctx} | {parallel} | {plan_layers} / {layers} | {totals.get(gpu, 0) / MIB:.1f} "
                f"| {nvml_text} | {nvml_ratio} | {buffers.get(gpu, 0) / MIB:.1f} | {real.get(gpu, 0) / MIB:.1f} "
                f"| {ratio:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(
        main(sys.argv[1].split(","), [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3]), "--header" in sys.argv)
    )
