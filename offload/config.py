"""One typed settings object, read once and passed down.

Sources, highest precedence first: CLI flags (passed as keyword arguments to `load_settings`),
`OFFLOAD_*` environment variables, `$OFFLOAD_HOME/config.toml`, the defaults below.
Nothing else in offload reads `os.environ` for its own settings.

Every field is registered once, here, with a dotted key (`llm.backend`): its TOML section and name in
config.toml (`[llm]` / `backend = "vulkan"`), what `offload config get/set/list` take, and what
docs/CONFIG.md shows. Flat `name = value` lines at the top of config.toml, the older form, still work;
when both forms name one field, the sectioned one wins.
"""

from __future__ import annotations

import math
import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_PORT = 11434
BACKENDS = ("auto", "cuda", "rocm", "vulkan", "metal", "cpu")
DISCOVERABLE = ("ollama", "huggingface", "lmstudio")  # offload/models/found.py names the same sources
DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ
# A key travels in an HTTP header: printable ASCII without spaces, so every client sends it unchanged.
_KEY_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F))


def _key(dotted: str) -> dict[str, Any]:
    """The field's config key, registered beside its type and default."""
    return {"key": dotted}


def default_home() -> Path:
    return Path.home() / ".offload"


class Settings(BaseSettings):
    """Every knob offload has. The descriptions are what `offload serve --help` and docs/CONFIG.md show."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", validate_default=True)

    host: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}",
        description="Address to bind (server) or reach (CLI): host[:port] or http://host:port.",
        json_schema_extra=_key("server.host"),
    )
    home: Path = Field(
        default_factory=default_home,
        description="Directory holding the model store, backends and config.toml.",
        json_schema_extra=_key("server.home"),
    )
    keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded after its last request (Ollama duration syntax).",
        json_schema_extra=_key("server.keep_alive"),
    )
    num_ctx: int = Field(
        4096,
        ge=256,
        le=1 << 20,
        description="Context length when a request does not ask for one.",
        json_schema_extra=_key("llm.num_ctx"),
    )
    num_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads per runner for decoding; 0 means one per physical core.",
        json_schema_extra=_key("llm.num_threads"),
    )
    num_batch: int = Field(
        512,
        ge=1,
        le=1 << 16,
        description="Prompt tokens evaluated per llama_decode call.",
        json_schema_extra=_key("llm.num_batch"),
    )
    num_parallel: int | Literal["auto"] = Field(
        "auto",
        description="Sequence slots per loaded model (requests decoded together): auto or 1 to 256. The KV cache "
        "holds num_ctx tokens for each slot, so memory grows with it. auto: 4 slots when that keeps every GPU layer "
        "and the context of one slot, else 2, else 1; on the CPU, 4 when they fit in memory. Requests beyond the "
        "slots wait in the model's queue.",
        json_schema_extra=_key("llm.num_parallel"),
    )
    batch_invariant: bool = Field(
        False,
        description="Give every request exactly the tokens it would get alone (same seed, same output), however "
        "many others are decoded beside it. Guaranteed on the CPU: weight repacking, llama.cpp's tiled K-quant "
        "matmul and flash attention are turned off and prompts are evaluated in batch-independent shapes, which "
        "costs speed (docs/BENCHMARKS.md). GPU kernels still depend on the batch.",
        json_schema_extra=_key("llm.batch_invariant"),
    )
    pipeline: bool = Field(
        True,
        description="With every layer on a GPU and an even num_parallel of 8 or more, split the slots over two "
        "llama.cpp contexts: the GPU evaluates one half while the host samples the other (one more compute "
        "buffer on the GPU). Off: one context, and the GPU waits while the host samples (docs/BENCHMARKS.md).",
        json_schema_extra=_key("llm.pipeline"),
    )
    gpu_memory_limit: ByteSize | None = Field(
        None,
        description="Most memory offload's runners may use on each GPU together, CUDA context included (e.g. "
        "6GiB). Unset: the GPU's free memory less a 512 MiB headroom.",
        json_schema_extra=_key("llm.gpu_memory_limit"),
    )
    backend: str = Field(
        "auto",
        description="llama.cpp backend variant: auto (the best this machine can use), cuda, rocm, vulkan, metal "
        "or cpu. A named backend is forced: if it cannot run, loading fails instead of falling back.",
        json_schema_extra=_key("llm.backend"),
    )
    gpu_layers: str = Field(
        "auto",
        description="Layers to offload to the GPU: auto (as many as fit), -1 (all) or a count >= 0.",
        json_schema_extra=_key("llm.gpu_layers"),
    )
    max_loaded_models: int = Field(
        0,
        ge=0,
        le=1024,
        description="Models loaded at once; 0 means 3 per GPU, or 3 on a machine without one. Past it (or past "
        "the memory), the least recently used idle model is unloaded.",
        json_schema_extra=_key("scheduler.max_loaded_models"),
    )
    max_queue: int = Field(
        512,
        ge=1,
        le=1 << 20,
        description="Requests that may wait for one model beyond its busy slots; past it the server answers 503 "
        "with Retry-After.",
        json_schema_extra=_key("scheduler.max_queue"),
    )
    runner_start_timeout: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="Seconds a runner may take to load a model before it is given up.",
        json_schema_extra=_key("runner.start_timeout"),
    )
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds requests in flight get to finish after SIGTERM or Ctrl-C (no new connection is accepted "
        "meanwhile); then open streams end with an error, waiting requests get 503, and the runners are stopped.",
        json_schema_extra=_key("server.shutdown_grace"),
    )
    log_level: str = Field(
        "info", description="debug, info, warning or error.", json_schema_extra=_key("server.log_level")
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route but / and /health needs `Authorization: Bearer <key>` (401 otherwise); "
        "the offload CLI sends it too. Printable ASCII, no spaces. Prefer the environment or api_key_file to "
        "config.toml.",
        json_schema_extra=_key("server.api_key"),
    )
    api_key_file: Path | None = Field(
        None,
        description="A file whose first line is the API key, read at start when api_key is not set.",
        json_schema_extra=_key("server.api_key_file"),
    )
    origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Browser origins allowed beside the local ones (http(s) on localhost, 127.0.0.1, [::1]), "
        "comma-separated; `*` inside one matches any text (https://*.example.com), `*` alone every origin. "
        "Requests from any other Origin get 403; credentials are never allowed.",
        json_schema_extra=_key("server.origins"),
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Host header names accepted beside localhost, *.localhost and loopback addresses while the "
        "server is bound to loopback (others get 403: DNS rebinding), comma-separated; `*` matches any text.",
        json_schema_extra=_key("server.allowed_hosts"),
    )
    max_body_bytes: ByteSize = Field(
        ByteSize(DEFAULT_MAX_BODY),
        ge=1024,
        description="Largest JSON request body (e.g. 32MiB); a bigger one is refused with 413. Blob uploads "
        "(/api/blobs) are not JSON and are not limited by it.",
        json_schema_extra=_key("server.max_body_bytes"),
    )
    models_path: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="Folders searched, with their subfolders, for .gguf files that are listed and served where they "
        "are, without copying: each is named by its file name without .gguf (a split model by its first part's). "
        "Separated like PATH (':', ';' on Windows); `offload serve --model-path DIR` may be repeated.",
        json_schema_extra=_key("models.path"),
    )
    discover: Annotated[tuple[str, ...], NoDecode] = Field(
        DISCOVERABLE,
        description="Other programs' model folders whose GGUF files are listed and served where they are, "
        "comma-separated: ollama, huggingface, lmstudio; `none` for none. Found files are never changed; `offload "
        "cp FOUND NAME` copies one into the store.",
        json_schema_extra=_key("models.discover"),
    )
    ollama_models: Path | None = Field(
        None,
        description="The Ollama store to read. Unset: OLLAMA_MODELS, else ~/.ollama/models and "
        "/usr/share/ollama/.ollama/models (Linux service installs).",
        json_schema_extra=_key("models.ollama"),
    )
    hf_cache: Path | None = Field(
        None,
        description="The Hugging Face hub cache to read. Unset: HF_HUB_CACHE, else $HF_HOME/hub, else "
        "~/.cache/huggingface/hub.",
        json_schema_extra=_key("models.hf_cache"),
    )
    lmstudio_models: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="LM Studio's models folders to read, separated like models.path. Unset: ~/.lmstudio/models "
        "and ~/.cache/lm-studio/models.",
        json_schema_extra=_key("models.lmstudio"),
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in BACKENDS:
            raise ValueError("backend must be one of " + ", ".join(BACKENDS))
        return value

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _gpu_layer_count(cls, value: object) -> str:
        # TOML and CLI flags may hand over an int; the field keeps one spelling, a string.
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError('gpu_layers must be "auto", -1 or a count >= 0')
        text = str(value).strip().lower()
        if text == "auto":
            return text
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f'gpu_layers must be "auto", -1 or a count >= 0, not {value!r}') from None
        if count < -1:
            raise ValueError(f'gpu_layers must be "auto", -1 or a count >= 0, not {value!r}')
        return str(count)

    @field_validator("num_parallel", mode="before")
    @classmethod
    def _slot_count(cls, value: object) -> int | str:
        return parse_parallel(value)

    @field_validator("gpu_memory_limit", mode="before")
    @classmethod
    def _no_limit(cls, value: object) -> object:
        # "", "0" and "none" mean no limit, as an unset variable does.
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "0", "none"}) or value == 0:
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return value

    @field_validator("api_key", "api_key_file", mode="before")
    @classmethod
    def _no_key(cls, value: object) -> object:
        # An empty variable means no key, as an unset one does.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("api_key")
    @classmethod
    def _header_safe_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_api_key(value.get_secret_value())
        return value

    @field_validator("origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # The environment and CLI give one comma-separated string; config.toml may give a list.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("models_path", "lmstudio_models", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        # The environment and CLI give one string separated like PATH; config.toml may give a list.
        if isinstance(value, str | Path):
            return tuple(Path(part).expanduser() for part in str(value).split(os.pathsep) if part.strip())
        if isinstance(value, list):
            return tuple(Path(str(part)).expanduser() for part in value)
        return value

    @field_validator("discover", mode="before")
    @classmethod
    def _sources(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            names = tuple(str(part).strip().lower() for part in value)
            if names == ("none",):
                return ()
            unknown = [name for name in names if name not in DISCOVERABLE]
            if unknown:
                known = ", ".join(DISCOVERABLE)
                raise ValueError(f"unknown source {unknown[0]!r}: discover takes {known} or none")
            return names
        return value

    @field_validator("ollama_models", "hf_cache", mode="before")
    @classmethod
    def _optional_path(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return Path(str(value)).expanduser()

    @field_validator("origins", "allowed_hosts")
    @classmethod
    def _plain_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern or any(char.isspace() or ord(char) < 0x20 for char in pattern):
                raise ValueError(f"{pattern!r} must be non-empty text without spaces")
        return tuple(pattern.lower().rstrip("/") for pattern in value)

    @model_validator(mode="after")
    def _read_key_file(self) -> Settings:
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = SecretStr(read_api_key_file(self.api_key_file))
        return self

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("host")
    @classmethod
    def _parsable_host(cls, value: str) -> str:
        split_host(value)
        return value

    @property
    def bind(self) -> tuple[str, int]:
        return split_host(self.host)

    @property
    def base_url(self) -> str:
        host, port = self.bind
        if host in {"0.0.0.0", "::", ""}:
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # config.toml lives in the home directory, which CLI or env may themselves move.
        home = init_settings().get("home") or env_settings().get("home") or default_home()
        toml_file = Path(str(home)).expanduser() / "config.toml"
        return (init_settings, env_settings, ConfigFileSource(settings_cls, toml_file))


def parse_parallel(value: object) -> int | Literal["auto"]:
    """num_parallel from the environment, the CLI (text) or config.toml (text or int): "auto" or an int in
    1..MAX_PARALLEL, one spelling per meaning; ValueError saying what is accepted otherwise."""
    wanted = f'num_parallel must be "auto" or a count from 1 to {MAX_PARALLEL}, not {value!r}'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(wanted)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise ValueError(wanted) from None
    if not 1 <= count <= MAX_PARALLEL:
        raise ValueError(wanted)
    return count


def check_api_key(key: str) -> str:
    """`key` when it can travel in an Authorization header unchanged; ValueError saying why not."""
    if not key or any(char not in _KEY_CHARS for char in key):
        raise ValueError("the API key must be printable ASCII without spaces")
    return key


def read_api_key_file(path: Path) -> str:
    """The first line of the key file, stripped; ValueError (which Settings reports) when it is unusable."""
    try:
        with Path(path).expanduser().open("rb") as handle:
            raw = handle.read(4097)
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from exc
    if len(raw) > 4096:
        raise ValueError(f"the API key file {path} is longer than 4096 bytes")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"the API key file {path} is not ASCII text") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"the API key file {path} is empty")
    return check_api_key(key)


def load_settings(**cli_overrides: Any) -> Settings:
    """Build the settings; `None` values in `cli_overrides` mean "flag not given"."""
    given = {key: value for key, value in cli_overrides.items() if value is not None}
    return Settings(**given)


def process_environ() -> Mapping[str, str]:
    """The process environment, for code that must hand it on (a subprocess's env, `config list`'s sources)."""
    return os.environ


# ---------------------------------------------------------------- config keys and config.toml


class ConfigError(ValueError):
    """A config key or value offload cannot accept, or a config.toml it cannot rewrite. The message says why."""


def config_keys() -> dict[str, str]:
    """Every dotted config key and the Settings field it sets, in the order the fields are declared."""
    keys: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        keys[_dotted(name, info)] = name
    return keys


def _dotted(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra
    key = extra.get("key") if isinstance(extra, dict) else None
    if not isinstance(key, str) or key.count(".") != 1:
        raise TypeError(f"Settings.{name} has no dotted config key")  # a programming error, caught by the tests
    return key


def field_for_key(key: str) -> str:
    """The Settings field a dotted key names; ConfigError listing the known keys otherwise."""
    field = config_keys().get(key.strip())
    if field is None:
        raise ConfigError(f"unknown config key {key!r}; known keys: " + ", ".join(config_keys()))
    return field


def resolve_home(environ: Mapping[str, str]) -> Path:
    """The home directory from the environment alone (OFFLOAD_HOME, else ~/.offload), for `offload config set`,
    which must work even when the current config.toml holds a value Settings would reject."""
    given = {name.upper(): value for name, value in environ.items()}.get("OFFLOAD_HOME")
    return (Path(given) if given else default_home()).expanduser().resolve()


def config_path(home: Path) -> Path:
    return Path(home).expanduser() / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def file_values(document: Mapping[str, Any]) -> dict[str, Any]:
    """Field values a parsed config.toml sets: flat `name = value` lines, then `[section] name = value`."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name in document and not isinstance(document[name], dict):
            values[name] = document[name]
    for key, name in config_keys().items():
        section, leaf = key.split(".")
        table = document.get(section)
        if isinstance(table, dict) and leaf in table:
            values[name] = table[leaf]
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """`file_values` of the file at `path`; {} when there is none. ConfigError when it is not TOML."""
    return file_values(_read_toml(path))


class ConfigFileSource(PydanticBaseSettingsSource):
    """config.toml as a settings source: sectioned keys and the older flat ones."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls)
        self._values = read_config_file(toml_file)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class _ValuesOnly(Settings):
    """Settings validated from the values given and nothing else: no environment, no config.toml."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _check(values: Mapping[str, Any]) -> Settings:
    """Validate the values a config.toml would hold, as Settings would read them, ignoring the environment."""
    try:
        return _ValuesOnly(**values)
    except ValidationError as exc:
        keys = {name: key for key, name in config_keys().items()}
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            problems.append(f"{keys.get(name, name or 'config')}: {error['msg']}")
        raise ConfigError("; ".join(problems)) from exc


def set_config_value(home: Path, key: str, raw: str) -> Any:
    """Validate `raw` for `key` through Settings, then rewrite config.toml atomically; returns the stored value.

    The whole file must validate afterwards, so a bad value never reaches disk. A flat line for the same
    field is dropped (the sectioned key replaces it). Comments in the file are not kept.
    """
    name = field_for_key(key)
    if name == "home":
        raise ConfigError(f"{key} cannot be set in config.toml, which lives in the home; use OFFLOAD_HOME or --home")
    path = config_path(home)
    document = _read_toml(path)
    values = file_values(document)
    values[name] = raw
    value = getattr(_check(values), name)
    stored = _storable(value)
    section, leaf = key.strip().split(".")
    table = document.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {section!r} is a value, not a [{section}] table; fix the file by hand")
    if name in document and not isinstance(document[name], dict):
        del document[name]
    table[leaf] = stored
    _write_atomically(path, dumps_toml(document))
    if isinstance(value, SecretStr) or (isinstance(value, tuple) and any(isinstance(v, Path) for v in value)):
        return value  # a secret is shown masked, never echoed; folders as Paths, which `joined` separates like PATH
    return stored


def _shown(value: Any) -> Any:
    # Paths as text; a SecretStr stays one, so printing it shows a mask.
    return str(value) if isinstance(value, Path) else value


def joined(values: tuple[Any, ...] | list[Any]) -> str:
    """A list setting as the text `offload config set` and the environment take: folders separated like PATH (a
    comma may be in a folder's name), other lists by commas."""
    if values and all(isinstance(value, Path) for value in values):
        return os.pathsep.join(str(value) for value in values)
    return ",".join(str(value) for value in values)


def _storable(value: Any) -> Any:
    """A Settings value as config.toml holds it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return [str(item) if isinstance(item, Path) else item for item in value]
    return value


def config_entries(settings: Settings, environ: Mapping[str, str], home: Path) -> list[tuple[str, Any, str]]:
    """(key, effective value, where it came from) for every key: "env OFFLOAD_X", "config.toml" or "default".

    CLI flags do not reach `offload config`, so these three are all the sources there are.
    """
    from_file = read_config_file(config_path(home))
    env_names = {name.upper() for name in environ}
    entries = []
    for key, name in config_keys().items():
        env_name = f"OFFLOAD_{name.upper()}"
        if env_name in env_names:
            source = f"env {env_name}"
        elif name in from_file:
            source = "config.toml"
        else:
            source = "default"
        value = getattr(settings, name)
        entries.append((key, joined(value) if isinstance(value, tuple) else _shown(value), source))
    return entries


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def dumps_toml(document: Mapping[str, Any]) -> str:
    """A TOML document from a parsed one: scalars and arrays of scalars, then [tables] (nested as [a.b])."""
    lines: list[str] = []
    _dump_table(document, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _dump_table(table: Mapping[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    scalars = {key: value for key, value in table.items() if not isinstance(value, dict)}
    tables = {key: value for key, value in table.items() if isinstance(value, dict)}
    if prefix and (scalars or not tables):
        lines += ["", "[" + ".".join(_toml_key(part) for part in prefix) + "]"]
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value, (*prefix, key))}")
    for key, value in tables.items():
        _dump_table(value, (*prefix, key), lines)


def _toml_key(key: str) -> str:
    bare = key and all(char.isascii() and (char.isalnum() or char in "-_") for char in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any, where: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list) and not any(isinstance(item, dict | list) for item in value):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    if hasattr(value, "isoformat"):  # tomllib's dates and times
        return str(value.isoformat())
    raise ConfigError(f"cannot rewrite config.toml: the value at {'.'.join(where)} is not a plain value")


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def split_host(value: str) -> tuple[str, int]:
    """Parse Ollama-style host strings: `host`, `host:port`, `:port`, `[v6]:port`, `http://host:port`."""
    text = value.strip()
    if not text:
        raise ValueError("host must not be empty")
    default_port = DEFAULT_PORT
    if "://" in text:  # as Ollama: an explicit scheme without a port means that scheme's port
        default_port = 443 if text.startswith("https://") else 80
    else:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"host {value!r}: scheme must be http or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"host {value!r}: bad port") from exc
    hostname = parts.hostname if parts.hostname is not None else "127.0.0.1"
    return hostname, port if port is not None else default_port

