"""`offload config get|set|list`: the dotted keys registered in offload/config.py, read and written in config.toml.

`set` validates the value through Settings and rewrites `$OFFLOAD_HOME/config.toml` atomically; `get` and `list`
show the effective values (environment over config.toml over defaults) and, in `list`, where each came from.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from offload.cli_common import fail
from offload.config import joined

config_app = typer.Typer(
    name="config",
    help="Read and change settings in $OFFLOAD_HOME/config.toml (keys like llm.backend).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _text(value: Any) -> str:
    # Lists as the text `set` takes (config.joined); a secret prints masked.
    if isinstance(value, tuple | list):
        return joined(value)
    return str(value)


def _current() -> Any:
    from pydantic import ValidationError

    from offload.config import ConfigError, config_keys, load_settings

    try:
        return load_settings()
    except ValidationError as exc:
        keys = {name: key for key, name in config_keys().items()}
        problems = "; ".join(
            f"{keys.get(str(error['loc'][0]), str(error['loc'][0])) if error['loc'] else 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"invalid settings: {problems} (fix with `offload config set KEY VALUE` or the environment)")
    except (ConfigError, OSError) as exc:
        fail(f"cannot read the configuration: {exc}")


@config_app.command("get")
def get(key: Annotated[str, typer.Argument(help="Dotted key, e.g. llm.backend.")]) -> None:
    """Print the value a key has now (environment over config.toml over the default)."""
    from offload.config import ConfigError, field_for_key

    try:
        name = field_for_key(key)
    except ConfigError as exc:
        fail(str(exc))
    typer.echo(_text(getattr(_current(), name)))


@config_app.command("set", context_settings={"ignore_unknown_options": True})  # `set llm.gpu_layers -1`
def set_(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. llm.backend.")],
    value: Annotated[str, typer.Argument(help="New value; checked like the environment variable would be.")],
) -> None:
    """Store a value in config.toml (checked first; the file is replaced atomically)."""
    from offload.config import ConfigError, config_path, field_for_key, process_environ, resolve_home, set_config_value

    environ = process_environ()
    home = resolve_home(environ)
    try:
        stored = set_config_value(home, key, value)
        name = field_for_key(key)
    except (ConfigError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{key.strip()} = {_text(stored)} (in {config_path(home)})")
    env_name = f"OFFLOAD_{name.upper()}"
    if env_name in {variable.upper() for variable in environ}:
        typer.echo(f"note: {env_name} is set in the environment and overrides config.toml", err=True)


@config_app.command("list")
def list_() -> None:
    """Every key with its value now and where that value comes from."""
    from offload.config import config_entries, process_environ

    settings = _current()
    try:
        entries = config_entries(settings, process_environ(), settings.home)
    except (ValueError, OSError) as exc:
        fail(f"cannot read the configuration: {exc}")
    rows = [("KEY", "VALUE", "SOURCE"), *((key, _text(value), source) for key, value, source in entries)]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for key, value, source in rows:
        typer.echo(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip())
