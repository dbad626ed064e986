from __future__ import annotations

import math
from typing import Any

import pytest

from offload.api.options import parse_keep_alive, resolve_options
from offload.durations import FOREVER
from offload.errors import BadRequest
from offload.generation import SamplingOptions


def test_defaults_are_ollamas() -> None:
    resolved = resolve_options({}, None)
    assert resolved.sampling == SamplingOptions()
    assert resolved.num_predict is None
    assert resolved.stop == ()
    assert resolved.num_ctx is None


def test_request_wins_over_model_parameters_which_win_over_dialect_defaults() -> None:
    resolved = resolve_options(
        {"temperature": 0.2, "top_p": 0.5, "stop": ["a"]},
        {"temperature": 0.7},
        dialect_defaults={"temperature": 1.0, "top_p": 1.0, "top_k": 7},
    )
    assert resolved.sampling.temperature == 0.7
    assert resolved.sampling.top_p == 0.5
    assert resolved.sampling.top_k == 7
    assert resolved.stop == ("a",)


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ({"num_predict": -1}, "num_predict", None),
        ({"num_predict": -2}, "num_predict", None),
        ({"num_predict": 12}, "num_predict", 12),
        ({"num_predict": 12.0}, "num_predict", 12),
        ({"num_ctx": 2048}, "num_ctx", 2048),
        ({"stop": "x"}, "stop", ("x",)),
        ({"stop": ["x", "", "y"]}, "stop", ("x", "y")),
        ({"seed": -1}, "seed", None),
        ({"seed": 42}, "seed", 42),
        ({"top_k": 0}, "top_k", 0),
        ({"repeat_last_n": -1}, "repeat_last_n", -1),
        ({"frequency_penalty": -1.5}, "frequency_penalty", -1.5),
        ({"temperature": 0}, "temperature", 0.0),
        ({"mirostat": 2}, "mirostat", 2),
        ({"mirostat_tau": 3.5}, "mirostat_tau", 3.5),
        ({"mirostat_eta": 0.05}, "mirostat_eta", 0.05),
    ],
)
def test_values(options: dict[str, Any], field: str, expected: Any) -> None:
    resolved = resolve_options({}, options)
    value = (
        getattr(resolved.sampling, field) if hasattr(resolved.sampling, field) else getattr(resolved, field)
    )
    assert value == expected


def test_unknown_and_engine_only_options_are_ignored() -> None:
    resolved = resolve_options({}, {"low_vram": True, "f16_kv": True, "num_gpu": 99, "num_thread": 4})
    assert resolved.sampling == SamplingOptions()


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": -0.1}, "options.temperature"),
        ({"temperature": math.nan}, "options.temperature"),
        ({"temperature": math.inf}, "options.temperature"),
        ({"temperature": "hot"}, "options.temperature"),
        ({"temperature": True}, "options.temperature"),
        ({"top_p": 1.5}, "options.top_p"),
        ({"top_k": -1}, "options.top_k"),
        ({"top_k": 1.5}, "options.top_k"),
        ({"min_p": -0.1}, "options.min_p"),
        ({"num_predict": -3}, "options.num_predict"),
        ({"num_predict": "10"}, "options.num_predict"),
        ({"num_ctx": 0}, "options.num_ctx"),
        ({"repeat_last_n": -2}, "options.repeat_last_n"),
        ({"seed": 2**64}, "options.seed"),
        ({"stop": 3}, "options.stop"),
        ({"stop": ["a", 3]}, "options.stop"),
        ({"penalize_newline": 1}, "options.penalize_newline"),
    ],
)
def test_bad_values_name_the_field(options: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        resolve_options({}, options)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_prefix_and_model_parameter_errors_are_attributed() -> None:
    with pytest.raises(BadRequest) as caught:
        resolve_options({}, {"temperature": -1}, prefix="")
    assert caught.value.param == "temperature"
    with pytest.raises(BadRequest) as caught:
        resolve_options({"top_p": 7}, {})
    assert caught.value.param == "parameters.top_p"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("2h45m10s", 9910.0),
        ("300", 300.0),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (120, 120.0),
        (2.5, 2.5),
        (-1, FOREVER),
        ("-1", FOREVER),
        ("-1m", FOREVER),
        (-0.5, FOREVER),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "5x", "1h-3m", True, "nan"])
def test_bad_keep_alive(value: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_keep_alive(value)
    assert caught.value.param == "keep_alive"
