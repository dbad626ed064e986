"""The runner's engine without HTTP or the socket: N sequences of P prompt tokens each generating G tokens
(temperature 0.8), all submitted at once, through offload.runner.engine.Engine in this process. Prints decode
tokens/s (generated tokens / time from the first to the last generated token) and the time per step. A probe for
where the time goes, beside bench/concurrency.py.

    python bench/engine_direct.py MODEL.gguf [--parallel 64] [--prompt-tokens 128] [--gen 128] [--gpu-layers 999]
        [--sampling-threads N] [--kv-unified] [--pipeline]
"""

from __future__ import annotations

# isort: off
from offload.runner.llamacpp import Context, Model  # llama.cpp before anything that may import numpy

# isort: on
import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.generation import GenerateRequest, SamplingOptions  # noqa: E402
from offload.hardware.cpu import physical_cores  # noqa: E402
from offload.runner.engine import Engine  # noqa: E402
from offload.runner.protocol import Message  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--gpu-layers", type=int, default=999)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--sampling-threads", type=int, default=1)
    parser.add_argument("--kv-unified", action="store_true")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--before", default="", help="rounds of N sequences run first on the same engine, e.g. 1,4,16")
    parser.add_argument("--early", action="store_true", help="every 4th sequence ends after gen/8 tokens")
    parser.add_argument("--invariant", action="store_true", help="batch-invariant mode, as the runner sets it up")
    parser.add_argument("--bos", action="store_true", help="prompts start with BOS, as tokenized text does")
    parser.add_argument("--stagger", type=int, default=0, help="submit this many requests per step (0: all at once)")
    parser.add_argument("--pipeline", action="store_true", help="the slots in two contexts, as the runner's pipeline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the engine's busy line
    if args.invariant:
        os.environ["GGML_CPU_TILED_MM"] = "0"  # as offload.runner.__main__ does
    model = Model(str(args.model), args.gpu_layers, repack=not args.invariant)
    lanes = 2 if args.pipeline else 1
    contexts = [
        Context(model, n_ctx=(args.prompt_tokens + args.gen + 64) * args.parallel // lanes, n_batch=args.batch,
                n_threads=args.threads, n_seq_max=args.parallel // lanes, kv_unified=args.kv_unified,
                flash_attn=not args.invariant)
        for _ in range(lanes)
    ]
    first_token: list[float] = []

    def emit(message: Message) -> None:
        if message.get("op") == "chunk" and not first_token and str(message.get("id", "")).startswith("r"):
            first_token.append(time.perf_counter())

    engine = Engine(model, contexts[0], emit, n_threads=args.threads, sampling_threads=args.sampling_threads,
                    invariant=args.invariant, pipeline=contexts[1] if args.pipeline else None)
    rng = random.Random(0)
    vocab = model.facts.n_vocab
    def request(seed: int, gen: int = args.gen) -> GenerateRequest:
        # A prompt of exactly prompt-tokens token ids, sent as context (no tokenizing): prompt text is the rest.
        ids = tuple(rng.randrange(100, min(vocab, 30000)) for _ in range(args.prompt_tokens - 1))
        ids = (model.bos, *ids[1:]) if args.bos else ids
        return GenerateRequest(model="m", prompt=" x", context=ids, num_predict=gen,
                               sampling=SamplingOptions(temperature=0.8, top_k=40, top_p=0.9, seed=seed))

    for n in [int(x) for x in args.before.split(",") if x]:  # earlier rounds on the same engine, not measured
        for i in range(n):
            engine.submit(f"b{n}-{i}", request(i))
        while engine.has_work():
            engine.step()
    first_token.clear()
    # --early: every 4th sequence stops after an eighth of the tokens, leaving gaps in the busy slots
    requests = [(f"r{i}", request(i, args.gen // 8 if args.early and i % 4 == 1 else args.gen))
                for i in range(args.parallel)]
    pending = list(requests)
    per_step = args.stagger or len(pending)  # requests arriving per step, as over HTTP they come one by one
    started = time.perf_counter()
    steps = 0
    step_times: list[float] = []
    while pending or engine.has_work():
        for request_id, arriving in pending[:per_step]:
            engine.submit(request_id, arriving)
        del pending[:per_step]
        t0 = time.perf_counter()
        engine.step()
        step_times.append(time.perf_counter() - t0)
        steps += 1
    ended = time.perf_counter()
    generated = sum(request.num_predict or 0 for _, request in requests)
    decode_s = ended - (first_token[0] if first_token else started)
    step_times.sort()
    print(f"parallel {args.parallel} sampling_threads {args.sampling_threads} kv_unified {args.kv_unified} "
          f"invariant {args.invariant} pipeline {args.pipeline}: "
          f"{generated / decode_s:.1f} tok/s decode, {generated / (ended - started):.1f} tok/s overall, {steps} steps, "
          f"median step {step_times[len(step_times) // 2] * 1000:.2f} ms", flush=True)
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
