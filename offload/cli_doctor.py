"""`offload doctor`: what this machine has, which backend variants are installed, what offload would use and why,
and each problem with its exact fix. `--json` prints exactly one JSON object on stdout.

The command never loads a backend into this process: devices come from the hardware probes (NVML, libcuda,
sysfs, libvulkan), variants are asked what they support in subprocesses (offload.backends.discover).
The lead registers `doctor` in cli.py.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from offload.hardware.devices import HardwareSnapshot, Problem

if TYPE_CHECKING:
    from rich.console import Console

    from offload.backends.select import Choice
    from offload.backends.variants import Variant

GPU_LIBRARIES = ("cuda", "rocm", "vulkan", "metal")


def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show devices, libraries found and where, backend variants, the backend choice and each problem's fix."""
    requested, home, config_problem = _configured()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Variants are probed in subprocesses: let them run while this thread probes the hardware.
        pending = pool.submit(_variants, home)
        from offload.hardware.probe import snapshot

        found = snapshot()
        variants, backends_problem = pending.result()
    report = build_report(found, variants, requested, [p for p in (config_problem, backends_problem) if p])
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        return
    _print(report)


def build_report(
    found: HardwareSnapshot, variants: list[Variant] | None, requested: str, extra: list[Problem] | None = None
) -> dict[str, Any]:
    """The doctor's JSON object. `variants` None: offload.backends could not be used (then no choice either)."""
    report = found.to_json()
    problems = [*found.problems, *(extra or [])]
    report["backends"] = []
    report["choice"] = None
    if variants is not None:
        from offload.backends import choice_json, variant_json
        from offload.backends.select import choose

        choice = choose(found, variants, requested)
        report["backends"] = [variant_json(variant) for variant in variants]
        report["choice"] = {"requested": requested, **choice_json(choice)}
        problems += backend_problems(found, variants, choice)
    report["problems"] = [{"subject": p.subject, "problem": p.problem, "fix": p.fix} for p in problems]
    return report


def backend_problems(found: HardwareSnapshot, variants: list[Variant], choice: Choice) -> list[Problem]:
    """Devices no installed variant can use, broken variants, a forced backend that cannot run: each with its fix."""
    from offload.backends.install import CMAKE_ARGS, pinned_version
    from offload.backends.variants import device_library

    problems: list[Problem] = []
    for library in GPU_LIBRARIES:
        devices = found.usable(library)
        users = [v for v in variants if v.usable and any(device_library(name) == library for name in v.devices)]
        if devices and not users:
            names = ", ".join(device.name for device in devices)
            problems.append(
                Problem(
                    f"{library} backend",
                    f"{names}: no installed variant can use it, so every layer would run on the CPU",
                    f"offload backends install {library}   (builds llama-cpp-python=={pinned_version()} "
                    f"with CMAKE_ARGS={CMAKE_ARGS[library]})",
                )
            )
    for variant in variants:
        if variant.problem is not None:
            fix = f"offload backends install {variant.name}"
            if variant.source == "venv":
                fix = "reinstall offload's environment (pip install --force-reinstall llama-cpp-python)"
            problems.append(Problem(f"{variant.name} variant ({variant.source})", variant.problem, fix))
    if not choice.ok:
        fix = "offload config set llm.backend auto" if choice.forced else "offload backends install cpu"
        problems.append(Problem("backend choice", choice.reason, fix))
    return problems


def _configured() -> tuple[str, Path, Problem | None]:
    """(requested backend, OFFLOAD_HOME, a problem when the settings could not be read)."""
    from offload.config import default_home, load_settings

    try:
        settings = load_settings()
    except Exception as exc:  # a bad config.toml or env must not stop the doctor: it is what the doctor is for
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = Problem("settings", f"the settings could not be read: {first}", "offload config list; fix the value")
        return "auto", default_home(), problem
    return str(getattr(settings, "backend", "auto")), settings.home, None


def _variants(home: Path) -> tuple[list[Variant] | None, Problem | None]:
    try:
        from offload.backends.variants import discover
    except ImportError as exc:
        return None, Problem("backends", f"offload.backends cannot be imported: {exc}", "reinstall offload")
    try:
        return discover(home), None
    except Exception as exc:  # discover promises not to raise; the doctor still reports the hardware if it does
        return None, Problem("backends", f"listing variants failed: {type(exc).__name__}: {exc}", "report this bug")


# ---------------------------------------------------------------- human output


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024**3:.1f} GiB"


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    devices = Table(title="Devices", title_justify="left")
    for column in ("id", "name", "memory (free/total)", "compute", "driver", ""):
        devices.add_column(column)
    for d in report["devices"]:
        note = "integrated" if d["integrated"] else ""
        memory = f"{_gib(d['free_memory'])} / {_gib(d['total_memory'])}"
        devices.add_row(d["id"], d["name"], memory, d["compute"] or "", d["driver_version"] or "", note)
    cpu = report["cpu"]
    if report["devices"]:
        console.print(devices)
    else:
        console.print("[bold]Devices[/bold]: no usable accelerator (see the rejections below)")
    console.print(
        f"[bold]CPU[/bold]: {cpu['name']}, {cpu['cores']} cores / {cpu['threads']} threads, "
        f"RAM {_gib(cpu['memory_available'])} available of {_gib(cpu['memory_total'])}; "
        f"{' '.join(cpu['flags']) or 'no SIMD flags known'}"
    )
    if report["cuda_driver_version"] is not None or report["cuda_runtime_version"] is not None:
        console.print(
            f"[bold]CUDA[/bold]: driver API {_cuda(report['cuda_driver_version'])}, "
            f"runtime found {_cuda(report['cuda_runtime_version'])}"
        )
    libraries = Table(title="Libraries", title_justify="left")
    for column in ("library", "path", "found by"):
        libraries.add_column(column)
    for lib in report["libraries"]:
        libraries.add_row(lib["name"], lib["path"] or "[dim]not found[/dim]", lib["how"] if lib["path"] else "")
    if report["libraries"]:
        console.print(libraries)
    _print_backends(console, report)
    if report["rejections"]:
        console.print("[bold]Rejected[/bold]")
        for r in report["rejections"]:
            console.print(f"  {r['probe']}: {r['subject']}: {r['reason']}", markup=False)
    if report["problems"]:
        console.print("[bold red]Problems[/bold red]")
        for p in report["problems"]:
            console.print(f"  {p['subject']}: {p['problem']}", markup=False)
            console.print(f"    fix: {p['fix']}", style="green", markup=False)
    else:
        console.print("[green]No problems found.[/green]")


def _print_backends(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Backend variants", title_justify="left")
    for column in ("name", "source", "GPU", "devices", "verified", "problem"):
        table.add_column(column)
    for v in report["backends"]:
        table.add_row(
            v["name"],
            v["source"],
            "yes" if v["supports_gpu"] else "no",
            ", ".join(v["devices"]),
            "yes" if v["verified"] else "-",
            v["problem"] or "",
        )
    if report["backends"]:
        console.print(table)
    choice = report["choice"]
    if choice is not None:
        console.print(f"[bold]Choice[/bold] (llm.backend={choice['requested']}): ", end="")
        console.print(choice["reason"], markup=False)


def _cuda(version: int | None) -> str:
    return "-" if version is None else f"{version // 1000}.{version % 1000 // 10}"
