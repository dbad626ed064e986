"""`offload backends list|install`: the llama.cpp variants installed, what each supports, and building one."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from offload.cli_common import fail

if TYPE_CHECKING:
    from offload.backends.select import Choice
    from offload.backends.variants import Variant

backends_app = typer.Typer(
    name="backends",
    help="llama.cpp builds (cuda, rocm, vulkan, metal, cpu): list what is installed, build one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _choice(variants: list[Variant], requested: str) -> Choice | None:
    """The selection on this machine, or None when the hardware probes are not available."""
    try:
        from offload.hardware.probe import snapshot
    except ImportError:
        return None
    from offload.backends.select import choose

    return choose(snapshot(), variants, requested)


def usable_text(variant: Variant, choice: Choice | None) -> str:
    if variant.problem is not None:
        return f"no: {variant.problem}"
    if choice is None:
        return "?"
    if variant in choice.variants:
        position = choice.variants.index(variant) + 1
        return "yes (chosen)" if position == 1 else f"yes ({position}. fallback)"
    label = f"{variant.name} variant ({variant.source})"
    for note in choice.skipped:
        if note.startswith(label):
            return "no: " + note.removeprefix(label).lstrip(": ")
    return "no: no such device here"


@backends_app.command("list")
def list_(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """What is installed, what each variant supports (as the library itself says) and what this machine uses."""
    from offload.backends import choice_json, variant_json
    from offload.backends.variants import discover
    from offload.config import load_settings

    try:
        settings = load_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(f"invalid settings: {exc}")
    variants = discover(settings.home)
    choice = _choice(variants, settings.backend)
    if json_output:
        body: dict[str, Any] = {
            "variants": [variant_json(variant) | {"usable": usable_text(variant, choice)} for variant in variants],
            "choice": choice_json(choice) if choice is not None else None,
        }
        typer.echo(json.dumps(body, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "SOURCE", "GPU OFFLOAD", "DEVICES", "VERIFIED", "USABLE HERE"):
        table.add_column(column, overflow="fold")
    for variant in variants:
        table.add_row(
            variant.name,
            variant.source if variant.path is None else f"{variant.source} ({variant.path})",
            "yes" if variant.supports_gpu else "no",
            ", ".join(variant.devices) or "-",
            "sha256 ok" if variant.verified else ("pip" if variant.source == "venv" else "no"),
            usable_text(variant, choice),
        )
    console = Console(highlight=False, soft_wrap=False)
    console.print(table)
    if choice is not None:
        console.print(f"\nbackend {settings.backend}: {choice.reason}", markup=False)


@backends_app.command("install")
def install(
    backend: Annotated[str, typer.Argument(help="cuda, rocm, vulkan, metal or cpu.")],
) -> None:
    """Build llama-cpp-python for BACKEND into $OFFLOAD_HOME/backends (minutes; the log is kept)."""
    from rich.console import Console

    from offload.backends.install import CMAKE_ARGS, InstallError
    from offload.backends.install import install as build
    from offload.config import load_settings, process_environ

    backend = backend.strip().lower()
    if backend not in CMAKE_ARGS:
        raise typer.BadParameter(f"unknown backend {backend!r}: one of {', '.join(CMAKE_ARGS)}")
    try:
        settings = load_settings()
    except ValueError as exc:
        fail(f"invalid settings: {exc}")
    console = Console(stderr=True, highlight=False)
    try:
        with console.status(f"building the {backend} variant") as status:

            def progress(line: str) -> None:
                if line.startswith(("building", "warning")):
                    console.print(line, markup=False)
                else:
                    status.update(f"building the {backend} variant: {line}")

            directory = build(backend, settings.home, progress, environ=process_environ())
    except InstallError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot install the {backend} variant: {exc}")
    typer.echo(f"installed the {backend} variant in {directory} (build log: {directory / 'build.log'})")
