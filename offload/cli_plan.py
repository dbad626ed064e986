"""`offload plan MODEL [--ctx N] [--parallel auto|N] [--json]`: what the memory planner would do, without loading.

It reads the model's GGUF tensor table from the store and the hardware snapshot (NVML, sysfs, ...; no backend is
loaded), then prints the plan: layers and expected bytes (weights, KV, compute) per device, the context and the
tensor split. `--json` prints exactly one JSON object. The lead registers `plan` in cli.py.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from offload.cli_common import fail
from offload.errors import OffloadError
from offload.planner import DeviceBudget, Plan, PlanRefused, auto_parallel, budgets_from, model_memory
from offload.planner import plan as make_plan

if TYPE_CHECKING:
    from offload.config import Settings
    from offload.hardware.devices import HardwareSnapshot
    from offload.models.gguf import GGUFFile

MIB = 1 << 20
DEFAULT_NUM_CTX_MIN = 2048  # the planner may shrink an unforced context down to this
GPU_PREFERENCE = ("cuda", "rocm", "metal", "vulkan")  # which library's devices "auto" plans for


def gpu_library(snapshot: HardwareSnapshot, backend: str) -> str | None:
    """The library whose devices get layers: none for backend "cpu", the named one, else the first of
    GPU_PREFERENCE the machine has."""
    if backend == "cpu":
        return None
    if backend != "auto":
        return backend
    return next((lib for lib in GPU_PREFERENCE if snapshot.usable(lib)), None)


def budgets_for(snapshot: HardwareSnapshot, backend: str, gpu_limit: int | None = None) -> tuple[DeviceBudget, ...]:
    library = gpu_library(snapshot, backend)
    if library is None:
        return (DeviceBudget("CPU", snapshot.cpu.memory_available),)
    return budgets_from(snapshot, library, limit=gpu_limit)


def plan_for(
    gguf: GGUFFile,
    snapshot: HardwareSnapshot,
    *,
    ctx: int | None,
    parallel: int | None,
    default_ctx: int,
    backend: str = "auto",
    gpu_layers: str = "auto",
    n_ubatch: int = 512,
    gpu_limit: int | None = None,
    pipeline: bool = False,
) -> Plan:
    """Pure: the plan for `gguf` on `snapshot`. A given `ctx` is forced (never shrunk); without one the
    server's default context may shrink down to DEFAULT_NUM_CTX_MIN. `gpu_layers` is the setting ("auto",
    "-1" or a count); `n_ubatch` the runner's micro-batch (it uses num_batch); `gpu_limit` caps each GPU
    (OFFLOAD_GPU_MEMORY_LIMIT); `parallel` the slots, None for the server's "auto" rule (planner.auto_parallel);
    `pipeline` the setting (a second context's compute buffers, planner/pipeline.py). Raises PlanRefused or
    InvalidGGUF."""
    num_gpu = None if gpu_layers == "auto" else int(gpu_layers)
    n_ctx = ctx if ctx is not None else default_ctx
    memory = model_memory(gguf)
    budgets = budgets_for(snapshot, backend, gpu_limit)

    def plan_with(slots: int) -> Plan:
        return make_plan(
            memory,
            budgets,
            n_ctx=n_ctx,
            parallel=slots,
            num_gpu=num_gpu,
            num_ctx_min=n_ctx if ctx is not None else min(DEFAULT_NUM_CTX_MIN, n_ctx),
            num_ctx_max=gguf.context_length,
            n_ubatch=n_ubatch,
            pipeline=pipeline,
        )

    if parallel is not None:
        return plan_with(parallel)
    return auto_parallel(plan_with, n_ctx, gguf.context_length)


def render(model: str, p: Plan) -> str:
    """The human table: one row per device, then the context, split and reason."""
    rows: list[tuple[str, ...]] = [("DEVICE", "LAYERS", "WEIGHTS", "KV", "COMPUTE", "OVERHEAD", "TOTAL")]
    for name, use in p.usage.items():
        cells = (use.weights, use.kv, use.compute, use.overhead, use.total)
        rows.append((name, str(p.layers_per_device.get(name, 0)), *(f"{n / MIB:.1f} MiB" for n in cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    slots = f" x {p.parallel} sequences" if p.parallel > 1 else ""
    lines = [f"{model}: {p.n_gpu_layers}/{p.layers_total} layers on GPU, context {p.n_ctx}{slots}"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if p.tensor_split:
        lines.append("tensor split: " + ", ".join(f"{f:.3f}" for f in p.tensor_split))
    lines.append(f"headroom: {p.headroom / MIB:.0f} MiB per device; kv cache {p.kv_type}")
    lines.append(f"why: {p.reason}")
    return "\n".join(lines) + "\n"


def _settings() -> Settings:
    from pydantic import ValidationError

    from offload.config import load_settings

    try:
        return load_settings()
    except (ValidationError, ValueError, OSError) as exc:
        fail(f"invalid settings: {exc}")


def read_model(settings: Settings, name: str) -> GGUFFile:
    """The GGUF of a stored model (I/O: the store and the file's header)."""
    from offload.models.gguf import read_gguf
    from offload.models.store import Store

    return read_gguf(Store(settings.models_dir).get(name).model_path)


def machine() -> HardwareSnapshot:
    from offload.hardware.probe import snapshot

    return snapshot()


def plan(
    model: Annotated[str, typer.Argument(help="Model name.")],
    ctx: Annotated[int | None, typer.Option("--ctx", min=256, help="Context length (forced: never shrunk).")] = None,
    parallel: Annotated[
        str | None,
        typer.Option(
            "--parallel",
            help='Sequences served at once: "auto" or 1 to 256.',
            show_default="the num_parallel setting",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show where the layers of MODEL would go and how much memory each device would need, without loading it."""
    from offload.config import parse_parallel

    settings = _settings()
    try:
        slots = settings.num_parallel if parallel is None else parse_parallel(parallel)
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        gguf = read_model(settings, model)
        result = plan_for(
            gguf,
            machine(),
            ctx=ctx,
            parallel=None if slots == "auto" else slots,
            default_ctx=settings.num_ctx,
            backend=settings.backend,
            gpu_layers=settings.gpu_layers,
            n_ubatch=settings.num_batch,
            gpu_limit=settings.gpu_memory_limit,
            pipeline=settings.pipeline,
        )
    except PlanRefused as exc:
        if json_output:
            _print_json({"model": model, "error": exc.message, "code": exc.code})
            raise typer.Exit(1) from exc
        fail(exc.message)
    except OffloadError as exc:
        fail(exc.message)
    if json_output:
        _print_json({"model": model, **result.to_json()})
    else:
        typer.echo(render(model, result), nl=False)


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
