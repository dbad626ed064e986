"""The batching engine on the real starter model: many sequences in one llama_decode per step; in batch-invariant
mode each request gets what it gets alone; slots are freed by cancellation; prompts are prefilled in chunks beside
running decodes."""

from __future__ import annotations

# isort: off
# llama.cpp must be loaded before anything that may import numpy: the reverse order crashed on GPU hosts.
from offload.runner.llamacpp import BatchPart, Context, Model

# isort: on
import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from offload.generation import GenerateRequest, SamplingOptions
from offload.hardware.cpu import physical_cores
from offload.runner.engine import Engine
from offload.runner.process import RunnerProcess
from offload.runner.protocol import LoadOptions
from tests.unit.runner.test_engine_real import MAX_STEPS, PROMPT, Run

SLOTS = 8
N_PREDICT = 12
SETTINGS = [
    SamplingOptions(temperature=0.0, seed=1),
    SamplingOptions(temperature=0.8, seed=2),
    SamplingOptions(temperature=1.0, top_k=10, seed=3),
    SamplingOptions(temperature=0.7, top_p=0.5, seed=4),
    SamplingOptions(temperature=0.9, min_p=0.1, seed=5),
    SamplingOptions(temperature=0.8, repeat_penalty=1.3, seed=6),
    SamplingOptions(temperature=1.2, presence_penalty=0.5, frequency_penalty=0.5, seed=7),
    SamplingOptions(temperature=0.6, typical_p=0.8, seed=8),
]
PROMPTS = [
    PROMPT,
    "<start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n",
    "The capital of France is",
    "Once upon a time",
    PROMPT,
    "1, 2, 3, 4,",
    "<start_of_turn>user\nWrite a haiku about rain.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):",
]


@dataclass
class Batched:
    model: Model
    context: Context
    threads: int


@pytest.fixture(scope="module")
def batched(starter_model: Path) -> Iterator[Batched]:
    threads = physical_cores()
    model = Model(str(starter_model), 0)
    context = Context(model, n_ctx=SLOTS * 256, n_batch=64, n_threads=threads, n_seq_max=SLOTS)
    yield Batched(model, context, threads)
    context.close()
    model.close()


def drain(engine: Engine) -> int:
    for steps in range(1, MAX_STEPS):
        if not engine.has_work():
            return steps
        engine.step()
    raise AssertionError("engine did not finish")


def request(i: int, **kwargs: object) -> GenerateRequest:
    options: dict[str, object] = {"prompt": PROMPTS[i], "sampling": SETTINGS[i], "num_predict": N_PREDICT} | kwargs
    return GenerateRequest(model="gemma3:270m", **options)  # type: ignore[arg-type]


def alone(b: Batched, i: int) -> str:
    run = Run()
    engine = Engine(b.model, b.context, run, n_threads=b.threads)
    engine.submit("r", request(i))
    drain(engine)
    assert run.final("r")["eval_count"] >= 1
    return run.text("r")


def test_eight_streams_are_admitted_at_once_and_batched(batched: Batched) -> None:
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    for i in range(SLOTS):
        engine.submit(f"s{i}", request(i))
    active = engine.schedule()
    assert len(active) == SLOTS  # all admitted at once, one slot each
    assert sorted(seq.slot.seq_id for seq in active if seq.slot) == list(range(SLOTS))
    steps = drain(engine)
    assert all(run.final(f"s{i}")["eval_count"] >= 1 for i in range(SLOTS))
    # Batched: about N_PREDICT decode steps plus a few prefill steps, not 8 times that.
    assert steps < 3 * N_PREDICT


def test_sampling_on_several_threads_gives_what_one_thread_gives(batched: Batched) -> None:
    """Eight sequences with their own sampler settings sample from the same logits rows, once one after another and
    once in groups on 4 threads, for 16 rounds (each chain's state moves on: penalties, RNG): the same tokens.
    The rows come from one llama_decode, so llama.cpp's own run-to-run differences (where the cells land, the CPU
    attention's split) are out of the comparison."""
    engines = [
        Engine(batched.model, batched.context, Run(), n_threads=batched.threads, sampling_threads=threads)
        for threads in (1, 4)
    ]
    batched.context.clear()
    prefix = [batched.model.tokenize(PROMPTS[i])[:8] for i in range(SLOTS)]
    rows = batched.context.decode_parts([BatchPart(tokens, 0, i, output=True) for i, tokens in enumerate(prefix)])
    tokens: list[list[list[int]]] = []
    for engine in engines:
        sequences = [engine._start(f"s{i}", request(i)) for i in range(SLOTS)]
        pending = [(seq, row) for seq, row in zip(sequences, rows, strict=True) if row is not None]
        rounds = []
        for _ in range(16):  # llama_sampler_sample also records each token in its chain
            rounds.append([token for _, token in engine._sample(batched.context, pending)])
        tokens.append(rounds)
        for seq in sequences:
            seq.sampler.close()
        engine.stop_sampling_threads()
    assert tokens[0] == tokens[1]
    assert len({token for rounds in tokens[0] for token in rounds}) > SLOTS  # the settings really sample


Outcome = tuple[str, int | None]  # a request's text and eval_count


def alone_then_together(starter_model: Path, lengths: list[int]) -> tuple[list[Outcome], list[Outcome]]:
    """Through the real runner process in batch-invariant mode: request i (PROMPTS[i], SETTINGS[i], num_predict
    lengths[i]) run alone, one after another, then all at once."""
    options = LoadOptions(
        model_path=str(starter_model), n_ctx=SLOTS * 256, n_batch=64, n_seq_max=SLOTS, batch_invariant=True
    )

    async def collect(runner: RunnerProcess, i: int) -> Outcome:
        text, count = "", None
        async for chunk in runner.generate(request(i, num_predict=lengths[i])):
            text += chunk.text
            if chunk.done:
                count = chunk.eval_count
        return text, count

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        runner = RunnerProcess(options, name="gemma3:270m")
        await runner.start(120)
        try:
            alone = [await collect(runner, i) for i in range(len(lengths))]
            together = await asyncio.gather(*(collect(runner, i) for i in range(len(lengths))))
        finally:
            await runner.close()
        return alone, list(together)

    return asyncio.run(main())


def test_eight_streams_together_give_what_each_gives_alone(starter_model: Path) -> None:
    """Each of 8 requests with its own sampling settings and seed, alone and then all 8 at once: every text and
    token count identical. Prompts 0 and 4 are the same, so the alone runs also go through prefix reuse."""
    alone, together = alone_then_together(starter_model, [24] * SLOTS)
    assert all(count for _, count in alone)
    assert together == alone


def test_a_moved_stream_gives_what_it_gives_alone(starter_model: Path) -> None:
    """The streams in slots 0 and 2 end early, so later ones move down into their slots mid-generation (cache copied
    to another KV stream); each text is still exactly what the request gives alone."""
    alone, together = alone_then_together(starter_model, [2, 20, 3, 20, 20, 20])
    assert [count for _, count in alone][:3] == [2, 20, 3]
    assert together == alone


def test_a_cancelled_stream_frees_its_slot_for_the_next_request(batched: Batched) -> None:
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    for i in range(SLOTS):
        engine.submit(f"s{i}", request(i, num_predict=200))
    engine.submit("late", request(1, num_predict=3))
    engine.step()
    assert len(engine.active) == SLOTS and len(engine.waiting) == 1
    engine.cancel("s3")
    engine.step()  # the cancelled one leaves, the waiting one takes its slot in the same step
    assert run.final("s3")["done_reason"] == "cancel"
    assert {seq.id for seq in engine.active} == {f"s{i}" for i in range(SLOTS) if i != 3} | {"late"}
    for i in range(SLOTS):
        engine.cancel(f"s{i}")
    drain(engine)
    assert run.final("late")["eval_count"] == 3
    assert all(slot.seq is None for slot in engine.slots)


def test_cancel_during_prefill(batched: Batched) -> None:
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    long_prompt = "the sea is wide and deep " * 30  # > 64 tokens: several prefill chunks
    engine.submit("long", GenerateRequest(model="m", prompt=long_prompt, num_predict=4))
    engine.step()
    (seq,) = engine.active
    assert seq.prefilling and seq.n_cached > 0
    engine.cancel("long")
    engine.step()
    assert run.final("long")["done_reason"] == "cancel" and not engine.active


def test_a_long_prompt_does_not_stall_running_streams(batched: Batched) -> None:
    """While a long prompt is prefilled in chunks, the running stream gets a token every step."""
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    engine.submit("running", request(0, num_predict=40))
    while not run.text("running"):
        engine.step()
    long_prompt = "the sea is wide and deep " * 30
    engine.submit("long", GenerateRequest(model="m", prompt=long_prompt, num_predict=2))
    engine.step()
    (running, long) = engine.active
    assert long.prefilling
    before = running.n_generated
    prefill_steps = 0
    while long.prefilling:
        engine.step()
        prefill_steps += 1
    assert prefill_steps >= 2  # the prompt really took several chunks
    assert running.n_generated - before == prefill_steps  # and the stream advanced on every one of them
    drain(engine)


def test_busy_slots_stay_packed_and_each_decode_lists_them_in_order(
    batched: Batched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp evaluates a batch as one graph only while its sequence ids are consecutive and in increasing order
    (engine.py's docstring). After a round that fills every slot, new prompts sharing only a few template tokens
    with slots 1 and 6 take the lowest slots 0, 1, 2 (not 1, 6, 0), and every llama_decode lists its parts by id."""
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    for i in range(SLOTS):
        engine.submit(f"r1-{i}", request(i, num_predict=2))
    drain(engine)
    calls: list[list[int]] = []
    decode_parts = batched.context.decode_parts

    def recording(parts: list[BatchPart], **kwargs: bool) -> list[int | None]:
        calls.append([part.seq_id for part in parts])
        return decode_parts(parts, **kwargs)

    monkeypatch.setattr(batched.context, "decode_parts", recording)
    topics = ["dragons and castles", "the history of bread", "rivers of the world"]
    for i, topic in enumerate(topics):
        prompt = f"<start_of_turn>user\nTell me a long story about {topic}.<end_of_turn>\n<start_of_turn>model\n"
        engine.submit(f"r2-{i}", GenerateRequest(model="m", prompt=prompt, num_predict=6, sampling=SETTINGS[i]))
    active = engine.schedule()
    assert sorted(seq.slot.seq_id for seq in active if seq.slot) == [0, 1, 2]
    drain(engine)
    assert calls and all(ids == sorted(ids) for ids in calls)
    assert all(run.final(f"r2-{i}")["eval_count"] == 6 for i in range(len(topics)))


def test_a_stream_that_ends_early_leaves_no_gap_in_the_busy_slots(batched: Batched) -> None:
    """Four streams; the one in slot 1 ends after 2 tokens with nobody waiting: the stream in slot 3 moves into
    slot 1 (its cache copied), so the busy slots are 0-2 again, and it goes on to its full length."""
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    for i in range(4):
        engine.submit(f"s{i}", request(i, num_predict=2 if i == 1 else 10, sampling=SETTINGS[0]))
    engine.schedule()
    moved = next(seq for seq in engine.active if seq.id == "s3")
    assert moved.slot is not None and moved.slot.seq_id == 3
    while "s1" not in {m["id"] for m in run.messages if m["op"] == "chunk" and m["chunk"].get("done")}:
        engine.step()
    engine.step()  # the next schedule packs the slots
    assert sorted(slot.seq_id for slot in engine.slots if slot.seq is not None) == [0, 1, 2]
    assert moved.slot is not None and moved.slot.seq_id == 1
    drain(engine)
    assert [run.final(f"s{i}")["eval_count"] for i in range(4)] == [10, 2, 10, 10]
    assert run.text("s3")


def test_prefix_reuse_picks_the_slot_holding_the_conversation(batched: Batched) -> None:
    """Two conversations, then each one's next turn: it lands in the slot its first turn used and evaluates only
    the new tokens."""
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    first = [PROMPTS[1], PROMPTS[6]]
    for i, prompt in enumerate(first):
        engine.submit(f"t1-{i}", GenerateRequest(model="m", prompt=prompt, num_predict=2, sampling=SETTINGS[0]))
    drain(engine)
    held = {tuple(slot.cached[:5]): slot.seq_id for slot in engine.slots if slot.cached}
    follow = " Tell me more.<end_of_turn>\n<start_of_turn>model\n"
    for i in (1, 0):  # the other order: placement must follow the cache, not arrival
        engine.submit(f"t2-{i}", GenerateRequest(model="m", prompt=first[i] + follow, num_predict=2))
    active = engine.schedule()
    for seq in active:
        shared = len(batched.model.tokenize(first[int(seq.id[-1])]))
        assert seq.slot is not None and seq.slot.seq_id == held[tuple(seq.tokens[:5])]
        assert shared - 1 <= seq.n_cached < seq.n_prompt  # only the new turn is evaluated
    drain(engine)


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer"},  # minimum/maximum: the schema converter does not enforce them (README)
        "sure": {"type": "boolean"},
    },
    "required": ["color", "count", "sure"],
    "additionalProperties": False,
}


def test_json_schema_output_parses_and_validates(batched: Batched) -> None:
    """The base starter model left alone writes prose; under the schema's grammar every stream is JSON that
    satisfies it, while a free-text stream in the same batch runs unconstrained."""
    import json

    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    schema = json.dumps(SCHEMA)
    for i in range(3):
        engine.submit(
            f"j{i}",
            GenerateRequest(
                model="m", prompt=PROMPTS[1], json_schema=schema, num_predict=64,
                sampling=SamplingOptions(temperature=0.8, seed=i),
            ),
        )
    engine.submit("free", request(3))
    drain(engine)
    for i in range(3):
        assert run.final(f"j{i}")["done_reason"] == "stop"  # the grammar ended it, not num_predict
        value = json.loads(run.text(f"j{i}"))
        assert set(value) == {"color", "count", "sure"}
        assert value["color"] in {"red", "green", "blue"}
        assert isinstance(value["count"], int) and not isinstance(value["count"], bool)
        assert isinstance(value["sure"], bool)
    assert run.final("free")["eval_count"] == N_PREDICT  # free text beside them: not constrained, not cut short


@pytest.mark.parametrize(
    "schema",
    [
        "{not json",
        '{"type": "no-such-type"}',  # the converter asserts on it: once a dead runner and a 500
        '{"$ref": "#/definitions/missing"}',
    ],
)
def test_a_schema_the_converter_cannot_read_is_a_bad_request(batched: Batched, schema: str) -> None:
    run = Run()
    engine = Engine(batched.model, batched.context, run, n_threads=batched.threads)
    engine.submit("bad", GenerateRequest(model="m", prompt="x", json_schema=schema))
    drain(engine)
    (error,) = run.of("bad")
    assert error["op"] == "error" and error["code"] == "invalid_request_error"
    assert "invalid JSON schema" in error["message"]
