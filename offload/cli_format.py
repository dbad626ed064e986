"""Pure text formatting for the CLI: tables, sizes, relative times, and the views of list/ps/show.

Everything here takes the API's JSON (already decoded) and returns strings, so it is tested without a
server or a terminal. Tables are plain aligned columns (like Ollama's), which stay greppable when piped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
# Expiry this far out means "keep loaded forever" (Ollama answers a negative keep_alive with a far date).
_FOREVER_SECONDS = 10 * 365 * 86400


def human_bytes(n: int | float) -> str:
    """Decimal units like Ollama: 253 MB, 1.6 GB, 12 KB, 0 B."""
    value = float(n)
    unit = _UNITS[0]
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            break
        value /= 1000
    if unit == "B":
        return f"{int(value)} B"
    if abs(value) >= 10 or value.is_integer():
        return f"{round(value)} {unit}"
    return f"{value:.1f} {unit}"


def parse_time(text: object) -> datetime | None:
    """ISO 8601 from the API (Go writes nanoseconds, Python keeps microseconds) -> aware datetime or None."""
    if not isinstance(text, str) or not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    # Trim fractional seconds to 6 digits; fromisoformat on 3.11 accepts at most microseconds reliably.
    if "." in value:
        head, _, rest = value.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}" if digits else head + rest
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def human_duration(seconds: float) -> str:
    """A coarse duration: "Less than a second", "About a minute", "3 hours", "2 weeks"."""
    s = abs(seconds)
    if s < 1:
        return "Less than a second"
    if s < 60:
        return _plural(int(s), "second")
    if s < 120:
        return "About a minute"
    if s < 3600:
        return _plural(int(s // 60), "minute")
    if s < 7200:
        return "About an hour"
    if s < 2 * 86400:
        return _plural(int(s // 3600), "hour")
    if s < 14 * 86400:
        return _plural(int(s // 86400), "day")
    if s < 60 * 86400:
        return _plural(int(s // (7 * 86400)), "week")
    if s < 2 * 365 * 86400:
        return _plural(int(s // (30 * 86400)), "month")
    return _plural(int(s // (365 * 86400)), "year")


def human_time(when: datetime | None, now: datetime, *, missing: str = "Unknown") -> str:
    """Relative to `now`: "2 minutes ago" for the past, "4 minutes from now" for the future."""
    if when is None:
        return missing
    delta = (now - when).total_seconds()
    text = human_duration(delta)
    return f"{text} ago" if delta >= 0 else f"{text} from now"


def short_id(digest: object) -> str:
    """The first 12 hex digits of a digest, with or without its `sha256:` prefix."""
    text = str(digest or "")
    for prefix in ("sha256:", "sha256-"):
        text = text.removeprefix(prefix)
    return text[:12]


def processor(size: int, size_vram: int) -> str:
    """Where the model's memory lives: "100% CPU", "100% GPU", or "48%/52% CPU/GPU"."""
    if size_vram <= 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size <= 0 or size_vram > size:
        return "Unknown"
    cpu = round((size - size_vram) * 100 / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], gap: int = 4) -> str:
    """Left-aligned columns separated by at least `gap` spaces; no trailing spaces."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(widths[i] + gap) for i, cell in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def list_table(
    models: Sequence[Mapping[str, Any]], now: datetime, extra: Mapping[str, Any] | None = None
) -> str:
    """`offload list`: NAME ID SIZE MODIFIED SOURCE from /api/tags entries (a found model's `offload.source`,
    else "store"); then, from `extra` (/api/tags' `offload`), the found models that cannot serve and why."""
    rows = [
        [
            str(m.get("name") or m.get("model") or ""),
            short_id(m.get("digest")),
            human_bytes(_int(m.get("size"))),
            human_time(parse_time(m.get("modified_at")), now),
            str(_mapping(m.get("offload")).get("source") or "store"),
        ]
        for m in models
    ]
    text = table(["NAME", "ID", "SIZE", "MODIFIED", "SOURCE"], rows)
    unusable = (extra or {}).get("unusable")
    bad = [_mapping(entry) for entry in unusable] if isinstance(unusable, list) else []
    if bad:
        cells = [[str(e.get(k) or "") for k in ("name", "source", "reason", "path")] for e in bad]
        text += "\n\n" + table(["NOT USABLE", "SOURCE", "WHY", "PATH"], cells)
    stopped = (extra or {}).get("scan_stopped")
    if stopped:
        text += f"\n\nnote: the search for models on disk stopped early ({stopped}); the next list goes on"
    return text


def _until(expires_at: object, now: datetime) -> str:
    when = parse_time(expires_at)
    if when is None:
        return "Forever"
    seconds = (when - now).total_seconds()
    if seconds < 0:
        return "Stopping..."
    if seconds > _FOREVER_SECONDS:
        return "Forever"
    return human_time(when, now)


def ps_table(models: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """`offload ps`: Ollama's columns, then offload's placement (backend, GPU layers of total, sequence slots)."""
    rows = []
    for m in models:
        size, vram = _int(m.get("size")), _int(m.get("size_vram"))
        placement = m.get("offload")
        backend, layers, parallel = "-", "-", "-"
        if isinstance(placement, Mapping):
            if isinstance(placement.get("parallel"), int):
                parallel = str(placement["parallel"])
            backend = str(placement.get("backend") or "-")
            total = placement.get("layers_total")
            if isinstance(total, int):
                layers = f"{_int(placement.get('layers_on_gpu'))}/{total}"
            if placement.get("verified") is False:
                backend += " (unverified)"
        context = m.get("context_length")
        rows.append(
            [
                str(m.get("name") or m.get("model") or ""),
                short_id(m.get("digest")),
                human_bytes(size),
                processor(size, vram),
                str(context) if isinstance(context, int) else "-",
                _until(m.get("expires_at"), now),
                backend,
                layers,
                parallel,
            ]
        )
    headers = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "BACKEND", "GPU LAYERS", "PARALLEL"]
    text = table(headers, rows)
    return "\n".join([text, *_placement_notes(models)])


def _placement_notes(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """Said under the table, loudly: GPU layers asked for that did not land, and backends that fell through."""
    notes = []
    for m in models:
        placement = _mapping(m.get("offload"))
        name = str(m.get("name") or m.get("model") or "")
        if placement.get("warning"):
            notes.append(f"WARNING {name}: {placement['warning']}")
        for fallback in placement.get("fallbacks") or []:
            notes.append(f"fallback {name}: {fallback}")
    return notes


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _section(title: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    if not pairs:
        return []
    width = max(len(k) for k, _ in pairs)
    return [f"  {title}", *[f"    {k.ljust(width + 4)}{v}".rstrip() for k, v in pairs], ""]


def _parameter_pairs(parameters: object) -> list[tuple[str, str]]:
    """/api/show's `parameters` is Ollama's text form: one `key value` per line."""
    pairs = []
    for line in str(parameters or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            pairs.append((key, value.strip()))
    return pairs


def _adapter_pairs(adapters: object) -> list[tuple[str, str]]:
    """/api/show's `adapters` (offload's field: digest and size of each LoRA adapter, in the order they apply)."""
    pairs = []
    for adapter in adapters if isinstance(adapters, list) else []:
        entry = _mapping(adapter)
        pairs.append((f"LoRA {short_id(entry.get('digest'))}", human_bytes(_int(entry.get("size")))))
    return pairs


def show_summary(info: Mapping[str, Any], *, license_lines: int = 2) -> str:
    """`offload show MODEL`: model facts, capabilities, LoRA adapters, parameters, system prompt and license head."""
    details = _mapping(info.get("details"))
    model_info = _mapping(info.get("model_info"))
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    facts: list[tuple[str, str]] = []
    if arch:
        facts.append(("architecture", arch))
    if details.get("parameter_size"):
        facts.append(("parameters", str(details["parameter_size"])))
    for key, label in (
        ("block_count", "layers"),
        ("context_length", "context length"),
        ("embedding_length", "embedding length"),
    ):
        value = model_info.get(f"{arch}.{key}")
        if value is not None:
            facts.append((label, str(value)))
    if details.get("quantization_level"):
        facts.append(("quantization", str(details["quantization_level"])))
    capabilities = info.get("capabilities")
    caps = [(str(c), "") for c in capabilities] if isinstance(capabilities, list) else []
    lines = [*_section("Model", facts), *_section("Capabilities", caps)]
    lines += _section("Adapters", _adapter_pairs(info.get("adapters")))
    lines += _section("Parameters", _parameter_pairs(info.get("parameters")))
    template = str(info.get("template") or "").strip()
    if template:
        first = template.splitlines()[0]
        lines += _section("Template", [(first[:60] + (" ..." if len(template) > len(first[:60]) else ""), "")])
    system = str(info.get("system") or "").strip()
    if system:
        lines += _section("System", [(line, "") for line in system.splitlines()[:license_lines]])
    license_text = str(info.get("license") or "").strip()
    if license_text:
        head = [line.strip() for line in license_text.splitlines() if line.strip()][:license_lines]
        lines += _section("License", [(line, "") for line in head])
    return "\n".join(lines).rstrip("\n") + "\n" if lines else ""


def show_field(info: Mapping[str, Any], field: str) -> str:
    """One raw field of /api/show (modelfile, template, parameters, license, system), "" when absent."""
    value = info.get(field)
    return "" if value is None else str(value)


def now_utc() -> datetime:
    return datetime.now(UTC)
