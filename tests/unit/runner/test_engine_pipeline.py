"""Pipelining: the engine's slots split over two contexts of the real starter model (engine.py). In batch-invariant
mode every request still gets exactly what it gets alone, streams that move within a lane too; a lane in flight is
never touched; the first lane fills before the second; a stream cancelled while its lane is in flight ends and
frees its slot."""

from __future__ import annotations

# isort: off
# llama.cpp must be loaded before anything that may import numpy: the reverse order crashed on GPU hosts.
from offload.runner.llamacpp import Context, Model

# isort: on
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.hardware.cpu import physical_cores
from offload.runner.engine import Engine
from tests.unit.runner.test_engine_batching import SETTINGS, drain, request
from tests.unit.runner.test_engine_real import Run

ROOT = Path(__file__).resolve().parents[3]
LANE_SLOTS = 4


def probe(model: Path, lengths: list[int]) -> dict[str, Any]:
    """tests/unit/runner/pipeline_probe.py in a fresh process (batch invariance needs it: see there)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.runner.pipeline_probe", str(model), *map(str, lengths)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_pipelined_streams_give_what_each_gives_alone(starter_model: Path) -> None:
    """Eight requests with their own settings, alone and then at once over two lanes of 4 slots: identical texts
    and counts; both lanes held requests, launches overlapped, nothing touched a lane in flight."""
    result = probe(starter_model, [24] * 8)
    assert all(count == 24 for _, count in result["alone"])
    assert result["together"] == result["alone"]
    assert result["lanes"] == [0, 1] and result["overlapped"] > 0
    assert result["violations"] == [] and result["free_after"]


def test_streams_moved_within_a_lane_give_what_they_give_alone(starter_model: Path) -> None:
    """Requests 0-3 fill the first lane, 4-7 the second; in the first the stream in slot 1 ends early, in the second
    the one in slot 2, and each lane's stream in slot 3 moves down into the gap (cache copied): texts still
    identical."""
    lengths = [20, 2, 20, 20, 20, 20, 3, 20]
    result = probe(starter_model, lengths)
    assert [count for _, count in result["alone"]] == lengths
    assert result["together"] == result["alone"]
    assert result["moves"] > 0
    assert result["violations"] == [] and result["free_after"]


@pytest.fixture(scope="module")
def two_lanes(starter_model: Path) -> Iterator[tuple[Model, Context, Context]]:
    model = Model(str(starter_model), 0)
    threads = physical_cores()
    first, second = (
        Context(model, n_ctx=LANE_SLOTS * 256, n_batch=64, n_threads=threads, n_seq_max=LANE_SLOTS) for _ in range(2)
    )
    yield model, first, second
    first.close()
    second.close()
    model.close()


def test_the_first_lane_fills_before_the_second(two_lanes: tuple[Model, Context, Context]) -> None:
    """Below half the slots nothing is split (engine._choose_slot says why); past it the second lane takes the rest."""
    model, first, second = two_lanes
    engine = Engine(model, first, Run(), n_threads=physical_cores(), pipeline=second)
    for i in range(3):
        engine.submit(f"s{i}", request(i, num_predict=2))
    engine.schedule()
    assert [sum(slot.seq is not None for slot in lane.slots) for lane in engine.lanes] == [3, 0]
    for i in range(3, 6):
        engine.submit(f"s{i}", request(i, num_predict=2))
    engine.schedule()
    assert [sum(slot.seq is not None for slot in lane.slots) for lane in engine.lanes] == [4, 2]
    drain(engine)


def test_a_stream_cancelled_while_its_lane_is_in_flight(two_lanes: tuple[Model, Context, Context]) -> None:
    """The cancel waits until the lane is collected (its batch is being evaluated), then the stream ends with
    done_reason cancel and its slot takes the waiting request."""
    model, first, second = two_lanes
    run = Run()
    engine = Engine(model, first, run, n_threads=physical_cores(), pipeline=second)
    for i in range(2 * LANE_SLOTS):
        engine.submit(f"s{i}", request(i, num_predict=40, sampling=SETTINGS[0]))
    engine.submit("late", request(1, num_predict=3))
    engine.step()
    while not all(seq.n_generated for seq in engine.active):
        engine.step()
    (flying,) = [lane for lane in engine.lanes if lane.launched]
    victim = next(slot.seq for slot in flying.slots if slot.seq is not None)
    assert victim is not None
    engine.cancel(victim.id)
    engine.step()  # collects the lane in flight: the victim is still there
    assert victim.slot is not None and "late" in {request_id for request_id, _ in engine.waiting}
    engine.step()  # now it leaves, and the waiting request takes its slot
    assert run.final(victim.id)["done_reason"] == "cancel"
    assert "late" in {seq.id for seq in engine.active}
    for seq in list(engine.active):
        if seq.id != "late":
            engine.cancel(seq.id)
    drain(engine)
    assert run.final("late")["eval_count"] == 3
    assert all(slot.seq is None for slot in engine.slots)
