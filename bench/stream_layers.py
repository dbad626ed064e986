"""Where one stream's time per token goes: the same model and prompt decoded one token at a time, adding one layer
of the runner's work per row, in contexts of 1 and of N sequences (the runner's lane holds N). A probe for the
single-client target of issue 5 (>= 0.95 of llama-bench tg), beside bench/engine_direct.py.

Rows, each after a P-token prompt, G tokens, median of R runs:
  decode   llama_decode of one fixed token, then llama_synchronize (what llama-bench tg times)
  logits   + reading the output row's logits pointer (no copy)
  greedy   + offload's Sampler at temperature 0 (llama.cpp's chain: candidates over the vocabulary, argmax)
  sampled  + offload's Sampler at temperature 0.8, top_k 40, top_p 0.9 (the benchmark's settings)
  engine   offload.runner.engine.Engine with one request of those settings (scheduling, text, frames built)

    python bench/stream_layers.py MODEL.gguf [--slots 1,32] [--prompt-tokens 128] [--gen 128] [--runs 3]
"""

from __future__ import annotations

# isort: off
from offload.runner.llamacpp import C, Context, Model, Sampler  # llama.cpp before anything that may import numpy

# isort: on
import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.generation import GenerateRequest, SamplingOptions  # noqa: E402
from offload.hardware.cpu import physical_cores  # noqa: E402
from offload.runner.engine import Engine  # noqa: E402
from offload.runner.protocol import Message  # noqa: E402

SAMPLED = SamplingOptions(temperature=0.8, top_k=40, top_p=0.9, seed=1)
GREEDY = SamplingOptions(temperature=0.0, seed=1)


def token_loop(ctx: Context, prompt: list[int], gen: int, step: Callable[[], int]) -> float:
    """Seconds for `gen` single-token decodes after `prompt`, each followed by `step` (which gives the next
    token)."""
    ctx.clear()
    ctx.decode(prompt, 0)
    token = step()
    started = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + gen):
        ctx.decode([token], pos)
        token = step()
    return time.perf_counter() - started


def engine_run(model: Model, ctx: Context, prompt: list[int], gen: int, threads: int) -> float:
    """Seconds from the first to the last generated text of one request through the engine."""
    stamps: list[float] = []

    def emit(message: Message) -> None:
        if message.get("op") == "chunk":
            stamps.append(time.perf_counter())

    ctx.clear()
    engine = Engine(model, ctx, emit, n_threads=threads, sampling_threads=16)
    engine.submit("r", GenerateRequest(model="m", prompt=" x", context=tuple(prompt), num_predict=gen + 1,
                                       sampling=SAMPLED))
    while engine.has_work():
        engine.step()
    engine.stop_sampling_threads()
    # gen + 1 tokens: the first text comes after the prompt, then gen more (as the loops above time them)
    return stamps[-2] - stamps[0] if len(stamps) > 2 else float("nan")


def measure(model: Model, slots: int, prompt: list[int], gen: int, runs: int, threads: int) -> None:
    """Print each row's rate in a context of `slots` sequences."""
    vocab = model.facts.n_vocab
    fixed = prompt[1]
    ctx = Context(model, n_ctx=(len(prompt) + gen + 64) * slots, n_batch=512, n_threads=threads, n_seq_max=slots)
    greedy = Sampler(GREEDY, vocab, 1)
    sampled = Sampler(SAMPLED, vocab, 1)

    def sync() -> int:
        C.llama_synchronize(ctx.handle)
        return fixed

    def logits() -> int:
        C.llama_get_logits_ith(ctx.handle, -1)
        return fixed

    rows: dict[str, Callable[[], float]] = {
        "decode": lambda: token_loop(ctx, prompt, gen, sync),
        "logits": lambda: token_loop(ctx, prompt, gen, logits),
        "greedy": lambda: token_loop(ctx, prompt, gen, lambda: greedy.sample(ctx)),
        "sampled": lambda: token_loop(ctx, prompt, gen, lambda: sampled.sample(ctx)),
        "engine": lambda: engine_run(model, ctx, prompt, gen, threads),
    }
    base = 0.0
    for name, run in rows.items():
        run()  # warm: CUDA graphs, buffers
        seconds = statistics.median(run() for _ in range(runs))
        per_token = seconds / gen * 1000
        base = base or per_token
        print(f"slots {slots:3d} {name:8s} {gen / seconds:9.1f} tok/s {per_token:7.3f} ms/token "
              f"(+{per_token - base:.3f})", flush=True)
    greedy.close()
    sampled.close()
    ctx.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--slots", default="1,32", help="n_seq_max of the contexts to compare")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gpu-layers", type=int, default=999)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    model = Model(str(args.model), args.gpu_layers)
    vocab = model.facts.n_vocab
    rng = random.Random(0)
    prompt = [rng.randrange(100, min(vocab, 30000)) for _ in range(args.prompt_tokens)]
    print(f"{args.model.name}: vocab {vocab}, prompt {len(prompt)}, {args.gen} tokens, median of {args.runs} runs")
    for slots in [int(x) for x in args.slots.split(",")]:
        measure(model, slots, prompt, args.gen, args.runs, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
