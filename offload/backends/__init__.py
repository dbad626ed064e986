"""llama.cpp builds ("variants") offload can load: what is installed, verified and supported, and which to use.

    variants.py  discover + verify + probe (in a subprocess) the installed variants and the venv's own
    manifest.py  $OFFLOAD_HOME/backends/<platform>/manifest.json
    select.py    choose(): pure, the order to try them in
    install.py   build one with pip and the right CMAKE_ARGS

Importing this package imports no llama_cpp: the server process never loads a backend itself.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.backends.select import Choice
    from offload.backends.variants import Variant


def variant_json(variant: Variant) -> dict[str, Any]:
    data = asdict(variant)
    data["path"] = str(variant.path) if variant.path is not None else None
    data["devices"] = list(variant.devices)
    return data


def choice_json(choice: Choice) -> dict[str, Any]:
    return {
        "variants": [f"{v.name} ({v.source})" for v in choice.variants],
        "forced": choice.forced,
        "reason": choice.reason,
        "skipped": list(choice.skipped),
    }


def doctor_section(home: Path | None = None) -> list[dict[str, Any]]:
    """The variants found under `home` (default: the configured home) for `offload doctor --json`."""
    from offload.backends.variants import discover

    if home is None:
        from offload.config import load_settings

        home = load_settings().home
    return [variant_json(variant) for variant in discover(home)]
