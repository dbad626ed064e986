"""The pruned sampler chain picks exactly the tokens the textbook chain (penalties over the whole vocabulary) picks.

Real llama.cpp, real starter model: the pruning is only worth having if it is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.generation import SamplingOptions
from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from offload.runner.llamacpp import C, Context, Model, Sampler

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


class TextbookSampler(Sampler):
    """penalties -> top_k -> top_p -> temp -> dist over the full vocabulary, the order llama.cpp documents."""

    def __init__(self, options: SamplingOptions, n_vocab: int, seed: int) -> None:
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = C.llama_sampler_chain_add
        add(chain, C.llama_sampler_init_penalties(
            n_vocab, options.repeat_last_n, options.repeat_penalty, options.frequency_penalty,
            options.presence_penalty))
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
