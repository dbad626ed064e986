"""JSON schemas from clients (Ollama `format`, OpenAI `response_format`), bounded before a runner sees them.

A runner turns the schema into a GBNF grammar (llama-cpp-python's converter) and llama.cpp expands every
bounded repetition in it (`minItems`, `maxLength`, `{n,m}` in a `pattern`) into that many copies of a rule, so
a one-line schema could ask a runner for millions of rules. The converter also recurses once per nesting level
and would try to fetch a `$ref` that names a URL. What is refused here, each a 400 naming the field:

- a schema larger than MAX_SCHEMA_BYTES as compact JSON, or nested deeper than MAX_SCHEMA_DEPTH;
- a `$ref` that is not local (`#/...`);
- a count keyword (minLength, maxItems, ...) that is not an integer in 0..MAX_SCHEMA_REPEAT, and a `pattern`
  whose `{n}` / `{n,m}` repetitions exceed it.

- repetition counts that add up, over the whole schema, to more than MAX_SCHEMA_TOTAL_REPEAT (the converter
  writes each one out: many properties of maxLength 4096 would be a grammar of hundreds of MB).

Then the schema is converted here, by the same converter the runner uses (its one pure-Python file, loaded
without llama-cpp-python's package init, so no native code enters the API process): a schema it cannot
convert, whatever it raises (it asserts on unknown types, unanchored patterns, dangling refs), is a 400 here
and never reaches a runner, and a grammar larger than MAX_GRAMMAR_CHARS is refused.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from offload.errors import BadRequest
from offload.generation import MAX_SCHEMA_BYTES

log = logging.getLogger(__name__)

MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_REPEAT = 4096
MAX_SCHEMA_TOTAL_REPEAT = 16_384
MAX_GRAMMAR_CHARS = 1024 * 1024
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
    _check_converts(text, param)
    return text


@functools.lru_cache(maxsize=1)
def _converter() -> Any:
    """llama-cpp-python's llama_grammar.py as a standalone module (stdlib imports only), or None if absent."""
    path = next(
        (Path(place) / "llama_grammar.py" for place in _package_dirs() if (Path(place) / "llama_grammar.py").is_file()),
        None,
    )
    if path is None:
        log.warning("llama-cpp-python's schema converter not found; schemas are checked by the runner only")
        return None
    module_spec = importlib.util.spec_from_file_location("offload_schema_converter", path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _package_dirs() -> list[str]:
    """Where llama-cpp-python is installed, without importing it (a process that loaded its bare bindings, as a
    runner does, holds a stand-in package whose __path__ says the same)."""
    loaded = sys.modules.get("llama_cpp")
    if loaded is not None:
        return list(getattr(loaded, "__path__", None) or [])
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec is not None else []


def _check_converts(text: str, param: str) -> None:
    converter = _converter()
    if converter is None:
        return
    try:
        grammar = str(converter.json_schema_to_gbnf(text))
    except RecursionError:
        raise _refuse(param, "the JSON schema is nested too deeply to convert") from None
    except Exception as exc:  # foreign code: whatever it raises means it cannot express this schema
        raise _refuse(param, f"the JSON schema cannot be turned into a grammar: {str(exc)[:200]}") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise _refuse(
            param, f"the JSON schema makes a grammar of {len(grammar)} characters, at most {MAX_GRAMMAR_CHARS}"
        )


# Keywords whose value maps names to subschemas (a property may well be called "minLength"), and keywords
# whose value is data, not schema.
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DATA = frozenset({"enum", "const", "default", "examples", "required", "dependentRequired"})


def _check_nodes(schema: dict[str, Any], param: str) -> None:
    todo: list[tuple[Any, int, str]] = [(schema, 1, "schema")]
    repeats = 0
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
                repeats += _check_keyword(key, value, param)
                if repeats > MAX_SCHEMA_TOTAL_REPEAT:
                    raise _refuse(
                        param, f"the JSON schema's repetition counts add up to more than {MAX_SCHEMA_TOTAL_REPEAT}"
                    )
                child = "names" if key in _NAME_MAPS else "data" if key in _DATA else "schema"
                todo.append((value, depth + 1, child))
        elif isinstance(node, dict):
            todo.extend((value, depth + 1, "data") for value in node.values())


def _check_keyword(key: str, value: Any, param: str) -> int:
    """Refuse what one keyword must not be; returns the repetition it asks for (0 for most keywords)."""
    if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
        raise _refuse(param, "only local $ref values (#/...) are supported")
    if key in _COUNTS:
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SCHEMA_REPEAT):
            raise _refuse(param, f"{key} must be an integer from 0 to {MAX_SCHEMA_REPEAT}")
        return int(value)
    if key == "pattern" and isinstance(value, str):
        total = 0
        for low, high in _PATTERN_REPEAT.findall(value):
            if int(low) > MAX_SCHEMA_REPEAT or (high and int(high) > MAX_SCHEMA_REPEAT):
                raise _refuse(param, f"pattern repetitions may count at most {MAX_SCHEMA_REPEAT}")
            total += int(high or low)
        return total
    return 0
