from __future__ import annotations

import math
from typing import Any

import pytest

from offload.errors import BadRequest, InvalidModelfile
from offload.models.modelfile import PARAMETER_TYPES, coerce_parameter, parse_modelfile

FULL = '''# a comment
FROM ./models/tiny.gguf
parameter temperature 0.7
PARAMETER num_ctx 8192
PARAMETER stop "<|im_end|>"
PARAMETER stop <|endoftext|>
PARAMETER penalize_newline TRUE
Template """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}"""
SYSTEM "You are \\"terse\\"."
ADAPTER ./lora.gguf
MESSAGE user Is the sky blue?
MESSAGE assistant """yes"""
LICENSE MIT
LICENSE """second
license"""
'''


def test_full_modelfile() -> None:
    m = parse_modelfile(FULL)
    assert m.from_ == "./models/tiny.gguf"
    assert m.parameters == {
        "temperature": 0.7,
        "num_ctx": 8192,
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "penalize_newline": True,
    }
    assert m.template == "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    assert m.system == 'You are "terse".'
    assert m.adapters == ("./lora.gguf",)
    assert m.messages == (("user", "Is the sky blue?"), ("assistant", "yes"))
    assert m.license == "MIT\n\nsecond\nlicense"


def test_minimal_and_crlf() -> None:
    m = parse_modelfile("from gemma3:270m\r\nSYSTEM hi  \r\n")
    assert (m.from_, m.system, m.template, m.license) == ("gemma3:270m", "hi", None, None)
    assert m.parameters == {}


def test_last_template_wins() -> None:
    assert parse_modelfile("FROM x\nTEMPLATE a\nTEMPLATE b\n").template == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no FROM"),
        ("# only a comment\n", "no FROM"),
        ("SYSTEM hi\n", "no FROM"),
        ("FROM a\nFROM b\n", "line 2: FROM given more than once"),
        ("FROM a\n\nBOGUS x\n", "line 3: unknown instruction 'BOGUS'"),
        ("FROM a\nPARAMETER\n", "line 2: PARAMETER needs"),
        ("FROM a\nPARAMETER num_gqa 8\n", "unknown parameter 'num_gqa'"),
        ("FROM a\nPARAMETER temperature\n", "needs a value"),
        ("FROM a\nPARAMETER temperature hot\n", "line 2: parameter 'temperature' must be a number"),
        ("FROM a\nPARAMETER num_ctx 2.5\n", "must be an integer"),
        ("FROM a\nPARAMETER penalize_newline 1\n", "true or false"),
        ("FROM a\nPARAMETER temperature nan\n", "finite"),
        ("FROM a\nPARAMETER stop \"\"\n", "empty"),
        ('FROM a\nSYSTEM """never closed\n', 'line 2: SYSTEM: unterminated """'),
        ('FROM a\nSYSTEM "open\n', "unterminated quoted string"),
        ('FROM a\nSYSTEM "x" y\n', "after the closing quote"),
        ("FROM a\nMESSAGE tool hi\n", "MESSAGE role"),
        ("FROM\n", "FROM needs a value"),
        ("FROM a\x00\n", "NUL"),
        ("FROM a\n" + "#" * (1 << 20), "larger than"),
    ],
)
def test_invalid_modelfiles(text: str, message: str) -> None:
    with pytest.raises(InvalidModelfile) as info:
        parse_modelfile(text)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_ctx", 4096, 4096),
        ("num_ctx", 4096.0, 4096),
        ("temperature", 1, 1.0),
        ("temperature", 0.5, 0.5),
        ("seed", -1, -1),
        ("stop", "x", ["x"]),
        ("stop", ["a", "b"], ["a", "b"]),
        ("penalize_newline", False, False),
    ],
)
def test_coerce_parameter_accepts(key: str, value: Any, expected: Any) -> None:
    result = coerce_parameter(key, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_ctx", True, "must be an integer"),
        ("num_ctx", 2.5, "must be an integer"),
        ("num_ctx", "4096", "must be an integer"),
        ("num_ctx", 1 << 70, "64-bit"),
        ("temperature", False, "must be a number"),
        ("temperature", math.nan, "finite"),
        ("temperature", math.inf, "finite"),
        ("temperature", None, "must be a number"),
        ("num_predict", -math.inf, "finite"),
        ("stop", 3, "list of strings"),
        ("stop", ["a", 1], "list of strings"),
        ("penalize_newline", 1, "boolean"),
        ("tfs_z", 1.0, "unknown parameter"),
    ],
)
def test_coerce_parameter_rejects(key: str, value: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        coerce_parameter(key, value)
    assert message in info.value.message
    assert info.value.param == key


def test_parameter_table_types() -> None:
    assert set(PARAMETER_TYPES.values()) == {int, float, bool, str}
    assert PARAMETER_TYPES["stop"] is str
