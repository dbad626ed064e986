"""Ollama Modelfiles: parsing, and typing of model parameters (shared with the API's `options`).

    FROM <model name or path to a .gguf>        required, once
    PARAMETER <key> <value>                     typed by PARAMETER_TYPES; `stop` may repeat
    TEMPLATE / SYSTEM / LICENSE <value>         LICENSE may repeat (joined by blank lines)
    ADAPTER <path>                              may repeat
    MESSAGE <system|user|assistant> <value>     may repeat

Instructions are case-insensitive; `#` starts a comment line. A value is the rest of the line, a
"double-quoted" string on one line (\\" and \\\\ escape), or a \"\"\"triple-quoted\"\"\" block that may span
lines and is kept verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from offload.errors import BadRequest, InvalidModelfile

MAX_MODELFILE_BYTES = 1 << 20
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})

PARAMETER_TYPES: Mapping[str, type] = MappingProxyType(
    {
        "num_ctx": int,
        "num_predict": int,
        "temperature": float,
        "top_k": int,
        "top_p": float,
        "min_p": float,
        "typical_p": float,
        "repeat_penalty": float,
        "repeat_last_n": int,
        "presence_penalty": float,
        "frequency_penalty": float,
        "seed": int,
        "stop": str,  # a list of strings; each PARAMETER stop line adds one
        "num_gpu": int,
        "num_thread": int,
        "num_batch": int,
        "mirostat": int,
        "mirostat_eta": float,
        "mirostat_tau": float,
        "penalize_newline": bool,
        "num_keep": int,
    }
)
_INT64 = 1 << 63


@dataclass(frozen=True, slots=True)
class Modelfile:
    from_: str
    parameters: dict[str, Any]
    template: str | None
    system: str | None
    license: str | None
    adapters: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]


def coerce_parameter(key: str, value: Any) -> Any:
    """Check `value` for parameter `key` and return it in its canonical type.

    ints accept integral floats (3.0 -> 3); floats accept ints; bools are neither; NaN and infinities
    are rejected; `stop` takes a string or a list of strings and returns a list. Raises
    BadRequest(param=key) naming the field and the expected type.
    """
    expected = PARAMETER_TYPES.get(key)
    if expected is None:
        raise BadRequest(f"unknown parameter {key!r}", param=key)
    if key == "stop":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise BadRequest("parameter 'stop' must be a string or a list of strings", param=key)
        if any(not s for s in items):
            raise BadRequest("parameter 'stop' must not contain empty strings", param=key)
        return list(items)
    if expected is bool:
        if not isinstance(value, bool):
            raise BadRequest(f"parameter {key!r} must be a boolean, got {shown(value)}", param=key)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"parameter {key!r} must be {_article(expected)}, got {shown(value)}", param=key)
    if not math.isfinite(value):
        raise BadRequest(f"parameter {key!r} must be a finite number", param=key)
    if expected is int:
        if isinstance(value, float) and not value.is_integer():
            raise BadRequest(f"parameter {key!r} must be an integer, got {value!r}", param=key)
        number = int(value)
        if not -_INT64 <= number < _INT64:
            raise BadRequest(f"parameter {key!r} is out of the 64-bit integer range", param=key)
        return number
    return float(value)


def _article(kind: type) -> str:
    return "an integer" if kind is int else "a number"


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _from_text(key: str, text: str) -> Any:
    """A PARAMETER value as written in a Modelfile -> the Python value coerce_parameter checks."""
    kind = PARAMETER_TYPES.get(key)
    if kind is bool:
        lowered = text.lower()
        if lowered not in {"true", "false"}:
            raise BadRequest(f"parameter {key!r} must be true or false, got {text!r}", param=key)
        return lowered == "true"
    if kind is int or kind is float:
        try:
            return int(text) if kind is int else float(text)
        except ValueError:
            raise BadRequest(f"parameter {key!r} must be {_article(kind)}, got {text!r}", param=key) from None
    return text


class _Lines:
    """Cursor over the Modelfile text that knows the current line number for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._counted = (0, 1)  # (position, line there): counting on from it keeps this linear

    @property
    def line(self) -> int:
        start, line = self._counted
        if self.pos < start:
            start, line = 0, 1
        line += self.text.count("\n", start, self.pos)
        self._counted = (self.pos, line)
        return line

    def fail(self, message: str, line: int | None = None) -> InvalidModelfile:
        return InvalidModelfile(f"Modelfile line {line or self.line}: {message}", param="modelfile")

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        chunk, self.pos = self.text[self.pos : end], end
        return chunk

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def word(self) -> str:
        self.skip_spaces()
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1
        return self.text[start : self.pos]

    def value(self, what: str) -> str:
        self.skip_spaces()
        start_line = self.line
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise self.fail(f'{what}: unterminated """ block', start_line)
            value, self.pos = self.text[self.pos + 3 : end], end + 3
        elif self.text.startswith('"', self.pos):
            value = self._quoted(what)
        else:
            value = self.rest_of_line().strip()
            if not value:
                raise self.fail(f"{what} needs a value")
            return value
        if self.rest_of_line().strip():
            raise self.fail(f"{what}: unexpected text after the closing quote")
        return value

    def _quoted(self, what: str) -> str:
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text) and self.text[i] != "\n":
            char = self.text[i]
            if char == "\\" and i + 1 < len(self.text) and self.text[i + 1] in '"\\':
                out.append(self.text[i + 1])
                i += 2
                continue
            if char == '"':
                self.pos = i + 1
                return "".join(out)
            out.append(char)
            i += 1
        raise self.fail(f"{what}: unterminated quoted string")


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile; raises InvalidModelfile naming the line for anything malformed or unknown."""
    if len(text) > MAX_MODELFILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_MODELFILE_BYTES:
        raise InvalidModelfile(f"Modelfile is larger than {MAX_MODELFILE_BYTES} bytes", param="modelfile")
    if "\x00" in text:
        raise InvalidModelfile("Modelfile contains a NUL character", param="modelfile")
    cursor = _Lines(text.replace("\r\n", "\n"))
    from_: str | None = None
    parameters: dict[str, Any] = {}
    singles: dict[str, str] = {}
    licenses: list[str] = []
    adapters: list[str] = []
    messages: list[tuple[str, str]] = []
    while True:
        while cursor.pos < len(cursor.text) and cursor.text[cursor.pos].isspace():
            cursor.pos += 1
        if cursor.pos >= len(cursor.text):
            break
        if cursor.text[cursor.pos] == "#":
            cursor.rest_of_line()
            continue
        line = cursor.line
        instruction = cursor.word().upper()
        if instruction == "FROM":
            if from_ is not None:
                raise cursor.fail("FROM given more than once")
            from_ = cursor.value("FROM")
        elif instruction == "PARAMETER":
            key = cursor.word().lower()
            if not key:
                raise cursor.fail("PARAMETER needs a name and a value")
            if key not in PARAMETER_TYPES:
                raise cursor.fail(f"unknown parameter {key!r}")
            raw = cursor.value(f"PARAMETER {key}")
            try:
                value = coerce_parameter(key, _from_text(key, raw))
            except BadRequest as exc:
                raise cursor.fail(exc.message, line) from None
            if key == "stop":
                parameters.setdefault("stop", []).extend(value)
            else:
                parameters[key] = value
        elif instruction in {"TEMPLATE", "SYSTEM"}:
            singles[instruction] = cursor.value(instruction)
        elif instruction == "LICENSE":
            licenses.append(cursor.value("LICENSE"))
        elif instruction == "ADAPTER":
            adapters.append(cursor.value("ADAPTER"))
        elif instruction == "MESSAGE":
            role = cursor.word().lower()
            if role not in MESSAGE_ROLES:
                raise cursor.fail(f"MESSAGE role must be system, user or assistant, got {role!r}")
            messages.append((role, cursor.value(f"MESSAGE {role}")))
        else:
            raise cursor.fail(f"unknown instruction {instruction!r}", line)
    if from_ is None:
        raise InvalidModelfile("Modelfile has no FROM instruction", param="modelfile")
    return Modelfile(
        from_=from_,
        parameters=parameters,
        template=singles.get("TEMPLATE"),
        system=singles.get("SYSTEM"),
        license="\n\n".join(licenses) if licenses else None,
        adapters=tuple(adapters),
        messages=tuple(messages),
    )
