"""Predicted vs measured GPU memory: `offload plan --json` against what the runner reports after a real load
(llama.cpp's own buffer sizes per device, and the process's GPU memory from NVML).

On the GPU machine, with a server already running on $OFFLOAD_HOST and the models in its store:
    python3 scripts/gpu_plan_vs_measured.py MODEL[,MODEL...] CTX[,CTX...]  > table.md
Prints one markdown row per (model, context).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

MIB = 1 << 20


def predicted(model: str, ctx: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "offload", "plan", model, "--ctx", str(ctx), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    plan = json.loads(out)
    return {d["name"]: int(d["total"]) for d in plan["devices"]} | {"_layers": int(plan["n_gpu_layers"])}


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


def main(models: list[str], contexts: list[int]) -> int:
    host = os.environ.get("OFFLOAD_HOST", "127.0.0.1:11434")
    base = host if host.startswith("http") else f"http://{host}"
    print("| model | n_ctx | layers on GPU (plan / real) | GPU predicted MiB | GPU buffers MiB (llama.cpp) "
          "| ratio | NVML process MiB | CPU predicted MiB | CPU buffers MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in models:
        for ctx in contexts:
            plan = predicted(model, ctx)
            real, nvml, layers = measured(base, model, ctx)
            gpu = next((name for name in plan if name.startswith("CUDA")), "CUDA0")
            ratio = real.get(gpu, 0) / plan[gpu] if plan.get(gpu) else float("nan")
            nvml_text = f"{nvml / MIB:.0f}" if nvml is not None else "n/a"
            print(
                f"| {model} | {ctx} | {plan['_layers']} / {layers} | {plan.get(gpu, 0) / MIB:.1f} "
                f"| {real.get(gpu, 0) / MIB:.1f} | {ratio:.3f} | {nvml_text} | {plan.get('CPU', 0) / MIB:.1f} "
                f"| {real.get('CPU', 0) / MIB:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].split(","), [int(c) for c in sys.argv[2].split(",")]))
