"""Run requests through an engine whose slots are split over two contexts (pipelining), in batch-invariant mode,
in a fresh process: invariance needs GGML_CPU_TILED_MM=0 before the process's first matmul, which a test process
that already ran llama.cpp cannot promise. Prints one JSON object (see main).

    python -m tests.unit.runner.pipeline_probe MODEL.gguf LENGTH [LENGTH ...]
"""

from __future__ import annotations

import os

os.environ["GGML_CPU_TILED_MM"] = "0"  # as the runner sets it up for batch_invariant (offload/runner/__main__.py)

# isort: off
from offload.runner.llamacpp import Context, Model  # llama.cpp before anything that may import numpy

# isort: on
import json
import sys
from typing import Any

from offload.generation import GenerateRequest
from offload.hardware.cpu import physical_cores
from offload.runner.engine import Engine, Lane
from tests.unit.runner.test_engine_batching import PROMPTS, SETTINGS
from tests.unit.runner.test_engine_real import MAX_STEPS, Run

LANE_SLOTS = 4


class Watch:
    """Wraps each lane's context: any forget, move or decode of a lane that is in flight is a violation."""

    def __init__(self, engine: Engine) -> None:
        self.violations: list[str] = []
        self.overlapped = 0  # launches made while the other lane was in flight
        self.moves = 0
        self.engine = engine
        for lane in engine.lanes:
            for name in ("forget", "move", "decode_parts"):
                self._wrap(lane, name)

    def _wrap(self, lane: Lane, name: str) -> None:
        original = getattr(lane.context, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            if lane.launched:
                self.violations.append(f"{name} on lane {self.engine.lanes.index(lane)} while in flight")
            if name == "decode_parts" and any(other.launched for other in self.engine.lanes):
                self.overlapped += 1
            self.moves += name == "move"
            return original(*args, **kwargs)

        setattr(lane.context, name, watched)


def run(watch: Watch, requests: dict[str, tuple[int, int]]) -> list[tuple[str, int]]:
    """`requests`: id -> (index into PROMPTS and SETTINGS, num_predict), submitted at once; (text, eval_count)."""
    engine, out = watch.engine, Run()
    engine.emit = out
    for request_id, (i, length) in requests.items():
        engine.submit(request_id, GenerateRequest(model="m", prompt=PROMPTS[i], sampling=SETTINGS[i],
                                                  num_predict=length))
    for _ in range(MAX_STEPS):
        if not engine.has_work():
            break
        engine.step()
    return [(out.text(request_id), int(out.final(request_id)["eval_count"])) for request_id in requests]


def main() -> int:
    model_path, lengths = sys.argv[1], [int(x) for x in sys.argv[2:]]
    threads = physical_cores()
    model = Model(model_path, 0, repack=False)
    contexts = [
        Context(model, n_ctx=LANE_SLOTS * 256, n_batch=64, n_threads=threads, n_seq_max=LANE_SLOTS, flash_attn=False)
        for _ in range(2)
    ]
    engine = Engine(model, contexts[0], Run(), n_threads=threads, invariant=True, pipeline=contexts[1])
    watch = Watch(engine)
    alone = [run(watch, {f"a{i}": (i, length)})[0] for i, length in enumerate(lengths)]
    # which lane each request of the together round was placed in, read when it is admitted
    placed: dict[str, int] = {}
    schedule = engine.schedule

    def recording_schedule() -> Any:
        active = schedule()
        for seq in active:
            if seq.slot is not None:
                placed.setdefault(seq.id, engine.lanes.index(seq.slot.lane))
        return active

    engine.schedule = recording_schedule  # type: ignore[method-assign]
    together = run(watch, {f"t{i}": (i, length) for i, length in enumerate(lengths)})
    print(json.dumps({
        "alone": alone,
        "together": together,
        "lanes": sorted(set(placed.values())),
        "overlapped": watch.overlapped,
        "moves": watch.moves,
        "violations": watch.violations,
        "free_after": all(slot.seq is None for slot in engine.slots),
    }))
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
