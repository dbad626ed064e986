"""JSON schemas from clients (Ollama `format`, OpenAI `response_format`), bounded before a runner sees them.

A runner turns the schema into a GBNF grammar (llama-cpp-python's converter) and llama.cpp expands every
bounded repetition in it (`minItems`, `maxLength`, `{n,m}` in a `pattern`) into that many copies of a rule, so
a one-line schema could ask a runner for millions of rules. The converter also recurses once per nesting level
and would try to fetch a `$ref` that names a URL. What is refused here, each a 400 naming the field:

- a schema larger than MAX_SCHEMA_BYTES as compact JSON, or nested deeper than MAX_SCHEMA_DEPTH;
- a `$ref` that is not local (`#/...`);
- a count keyword (minLength, maxItems, ...) that is not an integer in 0..MAX_SCHEMA_REPEAT, and a `pattern`
  whose `{n}` / `{n,m}` repetitions exceed it.

Whether the rest is a schema the converter can express is its business: it answers a 400 from the runner.
"""

from __future__ import annotations

import json
import re
from typing import Any

from offload.errors import BadRequest
from offload.generation import MAX_SCHEMA_BYTES

MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_REPEAT = 4096
_COUNTS = frozenset(
    {
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
    }
)
_PATTERN_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _refuse(param: str, why: str) -> BadRequest:
    return BadRequest(f'invalid value for "{param}": {why}', param=param)


def schema_text(schema: dict[str, Any], param: str) -> str:
    """`schema` as compact JSON text, after the checks in the module docstring. Raises BadRequest."""
    # Depth first: json.dumps recurses and would fail on a deep document before its size is known.
    _check_nodes(schema, param)
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise _refuse(param, f"the JSON schema has {len(text.encode())} bytes, at most {MAX_SCHEMA_BYTES}")
    return text


# Keywords whose value maps names to subschemas (a property may well be called "minLength"), and keywords
# whose value is data, not schema.
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DATA = frozenset({"enum", "const", "default", "examples", "required", "dependentRequired"})


def _check_nodes(schema: dict[str, Any], param: str) -> None:
    todo: list[tuple[Any, int, str]] = [(schema, 1, "schema")]
    while todo:
        node, depth, kind = todo.pop()
        if depth > MAX_SCHEMA_DEPTH and isinstance(node, dict | list):
            raise _refuse(param, f"the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, list):
            todo.extend((item, depth + 1, kind) for item in node)
        elif isinstance(node, dict) and kind == "names":
            todo.extend((value, depth + 1, "schema") for value in node.values())
        elif isinstance(node, dict) and kind == "schema":
            for key, value in node.items():
                _check_keyword(key, value, param)
                child = "names" if key in _NAME_MAPS else "data" if key in _DATA else "schema"
                todo.append((value, depth + 1, child))
        elif isinstance(node, dict):
            todo.extend((value, depth + 1, "data") for value in node.values())


def _check_keyword(key: str, value: Any, param: str) -> None:
    if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
        raise _refuse(param, "only local $ref values (#/...) are supported")
    if key in _COUNTS and not (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SCHEMA_REPEAT
    ):
        raise _refuse(param, f"{key} must be an integer from 0 to {MAX_SCHEMA_REPEAT}")
    if key == "pattern" and isinstance(value, str):
        for low, high in _PATTERN_REPEAT.findall(value):
            if int(low) > MAX_SCHEMA_REPEAT or (high and int(high) > MAX_SCHEMA_REPEAT):
                raise _refuse(param, f"pattern repetitions may count at most {MAX_SCHEMA_REPEAT}")
