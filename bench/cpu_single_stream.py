"""One streamed request: decode tokens/s of offload vs llama.cpp's llama-bench (tg) and llama-server, same model,
same machine, same run. Not a test: it prints a table and ratios.

    python bench/cpu_single_stream.py [--model PATH.gguf] [--tokens 64] [--repeats 3] [--threads N]

Without --model it uses the starter model (imported into a temporary OFFLOAD_HOME). The reference tools are built
from the pinned llama-cpp-python's own llama.cpp source by bench/build_reference.sh. Each contender runs alone
(sequentially) so they do not compete for cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.hardware.cpu import physical_cores  # noqa: E402
from offload.models.starter import ensure_starter  # noqa: E402
from offload.models.store import Store  # noqa: E402
from tests.blackbox.server import ServerProcess, free_port  # noqa: E402

REF_BIN = ROOT / "bench" / ".ref" / "bin"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
# Ollama's default sampler settings, used by both servers so the per-token sampling work is the same.
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1, "seed": 1}


@dataclass
class Result:
    name: str
    tokens_per_s: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)


def llama_bench(model: Path, tokens: int, repeats: int, threads: int) -> Result:
    out = subprocess.run(
        [str(REF_BIN / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(tokens), "-r", str(repeats),
         "-t", str(threads), "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    runs = json.loads(out)
    samples = [float(s) for s in runs[0]["samples_ts"]]
    return Result(f"llama-bench tg{tokens}", samples, "no HTTP, no sampling")


def llama_server(model: Path, tokens: int, repeats: int, threads: int) -> Result:
    port = free_port()
    proc = subprocess.Popen(
        [str(REF_BIN / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-t", str(threads), "-c", "4096", "-np", "1", "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(base + "/health", timeout=1).status_code == 200)
        samples = []
        for _ in range(repeats + 1):  # the first run warms up
            body = {"prompt": PROMPT, "n_predict": tokens, "ignore_eos": True, "stream": True,
                    "cache_prompt": False, **{k: v for k, v in SAMPLING.items()}}
            count, first, last = _stream(base + "/completion", body, lambda d: bool(d.get("content")))
            samples.append((count - 1) / (last - first))
        return Result("llama-server (HTTP stream)", samples[1:], "client-timed, first to last token")
    finally:
        proc.terminate()
        proc.wait()


def offload(model: Path, tokens: int, repeats: int, threads: int) -> tuple[Result, Result]:
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        home = Path(tmp)
        name = "bench:latest"
        Store(home / "models").import_gguf(name, model)
        server = ServerProcess(home, extra_env={"OFFLOAD_NUM_THREADS": str(threads), "OFFLOAD_LOG_LEVEL": "warning"})
        server.start()
        try:
            client_side, server_side = [], []
            for _ in range(repeats + 1):
                body = {"model": name, "prompt": PROMPT, "raw": True, "stream": True,
                        "options": {**SAMPLING, "num_predict": tokens}}
                final: dict[str, object] = {}

                def text_or_final(d: dict[str, object], final: dict[str, object] = final) -> bool:
                    if d.get("done"):
                        final.update(d)
                    return bool(d.get("response"))

                count, first, last = _stream(server.base_url + "/api/generate", body, text_or_final)
                client_side.append((count - 1) / (last - first))
                server_side.append(float(final["eval_count"]) / (float(final["eval_duration"]) / 1e9))  # type: ignore[arg-type]
            return (
                Result("offload (HTTP stream)", client_side[1:], "client-timed, first to last token"),
                Result("offload eval rate", server_side[1:], "eval_count / eval_duration, runner-timed"),
            )
        finally:
            server.stop()


def _stream(url: str, body: dict[str, object], is_token: object) -> tuple[int, float, float]:
    count, first, last = 0, 0.0, 0.0
    with httpx.stream("POST", url, json=body, timeout=300) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            line = line.removeprefix("data: ").strip()
            if not line or line == "[DONE]":
                continue
            if is_token(json.loads(line)):  # type: ignore[operator]
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    return count, first, last


def _wait(ready: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF to run (default: the starter model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    subprocess.run([str(ROOT / "bench" / "build_reference.sh")], check=True)
    with tempfile.TemporaryDirectory(prefix="offload-bench-model-") as tmp:
        model = args.model or ensure_starter(Store(Path(tmp) / "models")).model_path
        reference = llama_bench(model, args.tokens, args.repeats, args.threads)
        results = [reference, llama_server(model, args.tokens, args.repeats, args.threads)]
        results.extend(offload(model, args.tokens, args.repeats, args.threads))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\nmodel {model.name}, {args.tokens} generated tokens, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, commit {commit}")
    print(f"{'contender':32} {'tok/s (median)':>15} {'vs llama-bench':>15}  runs / note")
    for result in results:
        runs = ", ".join(f"{v:.1f}" for v in result.tokens_per_s)
        ratio = result.median / reference.median
        print(f"{result.name:32} {result.median:15.1f} {ratio:14.1%}  [{runs}] {result.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
