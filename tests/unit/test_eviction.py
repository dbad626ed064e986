"""The eviction policy as a table: what to unload (least recently used idle first), when to wait, count limits."""

from __future__ import annotations

import pytest

from offload.eviction import Decision, Resident, free_after, make_room

GIB = 1 << 30


def idle(name: str, last_used: float, **usage: int) -> Resident:
    return Resident(name=name, busy=False, last_used=last_used, usage=usage)


def busy(name: str, last_used: float, **usage: int) -> Resident:
    return Resident(name=name, busy=True, last_used=last_used, usage=usage)


BUDGET = {"CUDA0": 24 * GIB, "CPU": 64 * GIB}


@pytest.mark.parametrize(
    ("case", "need", "residents", "max_loaded", "evict", "wait", "fits"),
    [
        ("empty machine", {"CUDA0": 8 * GIB}, [], 3, (), False, True),
        ("room beside others", {"CUDA0": 8 * GIB}, [idle("a", 1, CUDA0=8 * GIB)], 3, (), False, True),
        (
            "least recently used goes first",
            {"CUDA0": 10 * GIB},
            [idle("new", 5, CUDA0=8 * GIB), idle("old", 1, CUDA0=8 * GIB)],
            3,
            ("old",),
            False,
            True,
        ),
        (
            "only as many as needed",
            {"CUDA0": 20 * GIB},
            [idle("a", 1, CUDA0=6 * GIB), idle("b", 2, CUDA0=6 * GIB), idle("c", 3, CUDA0=6 * GIB)],
            9,
            ("a", "b", "c"),
            False,
            True,
        ),
        (
            "two of three",
            {"CUDA0": 16 * GIB},
            [idle("a", 1, CUDA0=6 * GIB), idle("b", 2, CUDA0=6 * GIB), idle("c", 3, CUDA0=6 * GIB)],
            9,
            ("a", "b"),
            False,
            True,
        ),
        (
            "a busy model is never evicted: the idle one goes even if more recent",
            {"CUDA0": 10 * GIB},
            [busy("old", 1, CUDA0=8 * GIB), idle("recent", 9, CUDA0=8 * GIB)],
            3,
            ("recent",),
            False,
            True,
        ),
        (
            "busy models in the way: wait, and unload nothing meanwhile",
            {"CUDA0": 20 * GIB},
            [busy("a", 1, CUDA0=8 * GIB), idle("b", 2, CUDA0=8 * GIB)],
            3,
            (),
            True,
            False,
        ),
        (
            "count limit evicts the least recently used",
            {"CUDA0": 1 * GIB},
            [idle("a", 2, CUDA0=GIB), idle("b", 1, CUDA0=GIB)],
            2,
            ("b",),
            False,
            True,
        ),
        (
            "count limit with every model busy: wait",
            {"CUDA0": 1 * GIB},
            [busy("a", 2, CUDA0=GIB), busy("b", 1, CUDA0=GIB)],
            2,
            (),
            True,
            False,
        ),
        (
            "CPU memory counts too",
            {"CPU": 40 * GIB},
            [idle("a", 1, CPU=30 * GIB), idle("b", 2, CPU=1 * GIB)],
            3,
            ("a",),
            False,
            True,
        ),
        (
            "too big even alone: unload everything idle, then load anyway",
            {"CUDA0": 30 * GIB},
            [idle("a", 1, CUDA0=GIB)],
            3,
            ("a",),
            False,
            False,
        ),
        ("a device outside the budget is not checked", {"Vulkan0": 99 * GIB}, [], 3, (), False, True),
        ("unknown machine: only the count", {}, [idle("a", 1), idle("b", 2)], 3, (), False, True),
    ],
)
def test_make_room(
    case: str,
    need: dict[str, int],
    residents: list[Resident],
    max_loaded: int,
    evict: tuple[str, ...],
    wait: bool,
    fits: bool,
) -> None:
    decision = make_room(need, BUDGET if need or residents else {}, residents, max_loaded)
    assert (decision.evict, decision.wait, decision.fits) == (evict, wait, fits), case
    assert decision.reason


def test_waiting_says_which_device_is_short() -> None:
    decision = make_room({"CUDA0": 20 * GIB}, BUDGET, [busy("a", 1, CUDA0=8 * GIB)], 3)
    assert decision == Decision(
        evict=(), wait=True, fits=False, reason=decision.reason
    ) and "CUDA0 needs 20480 MiB, 16384 MiB free" in decision.reason


def test_free_after() -> None:
    residents = [idle("a", 1, CUDA0=GIB, CPU=2 * GIB), busy("b", 2, CUDA0=3 * GIB, Vulkan0=GIB)]
    assert free_after(BUDGET, residents) == {"CUDA0": 20 * GIB, "CPU": 62 * GIB}
