"""What every CLI module shares: errors in red on stderr, and the exit that follows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    stderr_console().print(message, style="red", markup=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` as an error and end the command with `code` (1: failed, 2: usage)."""
    error(message)
    raise typer.Exit(code)
