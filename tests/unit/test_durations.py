"""parse_keep_alive: Ollama's keep_alive values to seconds (inf = forever, None = not given)."""

from __future__ import annotations

import math

import pytest

from offload.durations import FOREVER, parse_keep_alive
from offload.errors import BadRequest


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2h0m1s", 7201.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("100ns", 1e-7),
        ("+5m", 300.0),
        (" 5m ", 300.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("120", 120.0),
        ("2.5", 2.5),
        (0, 0.0),
        (30, 30.0),
        (3.5, 3.5),
        (-1, FOREVER),
        (-0.5, FOREVER),
        ("-1", FOREVER),
        ("-1m", FOREVER),
        (None, None),
        ("", None),
        ("   ", None),
    ],
)
def test_valid(value: str | int | float | None, seconds: float | None) -> None:
    parsed = parse_keep_alive(value)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)
        assert isinstance(parsed, float)


@pytest.mark.parametrize(
    "value",
    [
        "5x",
        "m5",
        "5m5",
        "5 m",
        "m",
        "-",
        "1h-5m",
        "five minutes",
        "nan",
        "NaN",
        "-nan",
        "--5m",
        "+-5m",
        True,
        False,
        pytest.param(math.nan, id="float-nan"),
    ],
)
def test_rejected(value: str | int | float) -> None:
    with pytest.raises(BadRequest) as info:
        parse_keep_alive(value)
    assert info.value.param == "keep_alive"
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["5x", True, pytest.param(math.nan, id="float-nan"), "nan", "--5m"])
def test_rejection_names_the_given_param(value: str | float) -> None:
    with pytest.raises(BadRequest) as info:
        parse_keep_alive(value, param="OFFLOAD_KEEP_ALIVE")
    assert info.value.param == "OFFLOAD_KEEP_ALIVE"
    assert "OFFLOAD_KEEP_ALIVE" in info.value.message
