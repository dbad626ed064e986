"""Ollama's keep_alive values: duration strings ("5m", "1h30m", "10s", "300ms"), plain numbers of seconds,
negative = forever, 0 = unload right after the request."""

from __future__ import annotations

import math
import re

from offload.errors import BadRequest

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FOREVER = math.inf


def parse_keep_alive(value: str | int | float | None, *, param: str = "keep_alive") -> float | None:
    """Seconds to stay loaded (math.inf for forever), or None when not given."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{param} must be a duration like \"5m\" or a number of seconds", param=param)
    if isinstance(value, int | float):
        if math.isnan(value):
            raise BadRequest(f"{param} must be a number, not NaN", param=param)
        if math.isinf(value):
            return FOREVER
        return FOREVER if value < 0 else float(value)
    text = value.strip()
    if not text:
        return None
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if not body[:1].isdigit():  # also keeps out "nan", "inf" and doubled signs
        raise BadRequest(f'{param} {value!r} is not a duration (examples: "5m", "1h30m", "10s", -1)', param=param)
    try:
        number = float(body)
    except ValueError:
        pos, total = 0, 0.0
        for match in _PART.finditer(body):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT[match.group(2)]
            pos = match.end()
        if pos != len(body) or pos == 0:
            raise BadRequest(
                f'{param} {value!r} is not a duration (examples: "5m", "1h30m", "10s", -1)', param=param
            ) from None
        number = total
    if not math.isfinite(number):
        raise BadRequest(f"{param} {value!r} is out of range", param=param)
    return FOREVER if sign < 0 else number
