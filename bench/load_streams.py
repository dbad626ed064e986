"""Reliability under a burst: many concurrent streams against one CPU runner with a small queue. Not a benchmark of
speed: it checks that every request ends (served to its last line, or 503 with Retry-After), that none hangs and
none is a 500, and that the server's and runner's memory go back to where they were. Loopback only, bounded in
requests (--streams x --rounds) and in time (--timeout per request).

    python bench/load_streams.py [--streams 200] [--queue 16] [--parallel 1] [--rounds 3] [--num-predict 16]
                                 [--retry] [--timeout 120] [--json OUT.json]

Starts `offload serve` on a free loopback port with a temporary OFFLOAD_HOME holding the starter model,
OFFLOAD_MAX_QUEUE=--queue and OFFLOAD_NUM_PARALLEL=--parallel, on the CPU backend. Each round sends --streams
streamed /api/generate requests at once; with --retry a client refused with 503 waits Retry-After and tries again
until served or --timeout. Memory: resident set (VmRSS) of the server and its runner after a warm-up request, and
again after each round once the server is idle (no request in progress). Exit status 1 when a request hung, got a
status other than 200 or 503, or a stream ended without its final line, or memory after the last round is more than
--memory-slack above the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.blackbox.server import ServerProcess, starter_home  # noqa: E402

MODEL = "gemma3:270m"
MiB = 1 << 20


@dataclass
class Round:
    outcomes: dict[str, int]
    seconds: float
    attempts: int
    rss_after: int  # bytes, server + runner, once idle
    served_latency_p50: float
    served_latency_max: float


@dataclass
class Report:
    command: str
    commit: str
    date: str
    machine: str
    streams: int
    queue: int
    parallel: int
    num_predict: int
    retry: bool
    rss_baseline: int
    rounds: list[Round] = field(default_factory=list)
    server_errors: int = 0  # >= 500 but 503, as the server counted them

    def failures(self, slack: float) -> list[str]:
        found = []
        for index, one in enumerate(self.rounds):
            bad = {k: v for k, v in one.outcomes.items() if k not in {"served", "busy"}}
            if bad:
                found.append(f"round {index + 1}: {bad}")
        if self.server_errors:
            found.append(f"the server counted {self.server_errors} responses >= 500 other than 503")
        if self.rounds and self.rounds[-1].rss_after > self.rss_baseline * (1 + slack):
            found.append(
                f"memory {self.rounds[-1].rss_after / MiB:.0f} MiB after the last round, baseline "
                f"{self.rss_baseline / MiB:.0f} MiB"
            )
        return found


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def in_progress(server: ServerProcess) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    found = re.search(r"^offload_http_requests_in_progress ([\d.]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def server_errors(server: ServerProcess) -> int:
    """Responses the server itself counted with a status >= 500 other than 503 (busy is an answer, not an error)."""
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    found = re.findall(r'^offload_http_requests_total\{.*status="(5\d\d)"\} ([\d.]+)$', text, re.MULTILINE)
    return sum(int(float(count)) for status, count in found if status != "503")


def settle(server: ServerProcess, pids: list[int], timeout: float) -> int:
    """Memory once nothing is in progress (the scrape itself aside) and a second has passed."""
    deadline = time.monotonic() + timeout
    while in_progress(server) > 1:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become idle: a request is still in progress")
        time.sleep(0.2)
    time.sleep(1.0)
    return rss(pids)


async def one(client: httpx.AsyncClient, index: int, args: argparse.Namespace) -> tuple[str, int, float]:
    """(outcome, attempts, seconds) of one client."""
    body = {
        "model": MODEL,
        "prompt": f"Count from {index} to {index + 20}.",
        "options": {"num_predict": args.num_predict},
    }
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            async with client.stream("POST", "/api/generate", json=body) as reply:
                if reply.status_code == 503:
                    await reply.aread()
                    wait = float(reply.headers.get("retry-after", "0") or 0)
                    if not args.retry:
                        return ("busy" if wait > 0 else "503 without Retry-After"), attempts, 0.0
                    if time.monotonic() - started + wait > args.timeout:
                        return "busy", attempts, 0.0
                    await asyncio.sleep(wait)
                    continue
                if reply.status_code != 200:
                    return f"status {reply.status_code}", attempts, 0.0
                last: dict[str, object] = {}
                async for line in reply.aiter_lines():
                    if line:
                        last = json.loads(line)
            outcome = "served" if last.get("done") is True else "ended without done"
            return outcome, attempts, time.monotonic() - started
        except httpx.TimeoutException:
            return "hung", attempts, 0.0
        except httpx.HTTPError as exc:
            return f"connection error {type(exc).__name__}", attempts, 0.0


async def burst(server: ServerProcess, args: argparse.Namespace) -> tuple[list[tuple[str, int, float]], float]:
    limits = httpx.Limits(max_connections=args.streams, max_keepalive_connections=0)
    timeout = httpx.Timeout(args.timeout, connect=30)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(one(client, i, args) for i in range(args.streams)))
        return list(results), time.monotonic() - started


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024  # type: ignore[union-attr]
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, {memory // 1024} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-predict", type=int, default=16)
    parser.add_argument("--retry", action="store_true", help="retry 503s after Retry-After until served or --timeout")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (then: hung)")
    parser.add_argument("--memory-slack", type=float, default=0.10, help="allowed growth over the baseline")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 1000 or not 1 <= args.rounds <= 20:
        parser.error("--streams 1..1000 and --rounds 1..20 keep the run bounded")

    home = starter_home(Path(tempfile.mkdtemp(prefix="offload-load-")))
    env = {
        "OFFLOAD_MAX_QUEUE": str(args.queue),
        "OFFLOAD_NUM_PARALLEL": str(args.parallel),
        "OFFLOAD_BACKEND": "cpu",
        "OFFLOAD_KEEP_ALIVE": "-1",
    }
    server = ServerProcess(home, extra_env=env)
    server.start()
    try:
        assert server.proc is not None
        warm = httpx.post(
            server.base_url + "/api/generate",
            timeout=args.timeout,
            json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 4}},
        )
        warm.raise_for_status()
        pids = [server.proc.pid, *server.runner_pids()]
        report = Report(
            command=" ".join(["python", "bench/load_streams.py", *(argv if argv is not None else sys.argv[1:])]),
            commit=git_commit(),
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
            machine=machine(),
            streams=args.streams,
            queue=args.queue,
            parallel=args.parallel,
            num_predict=args.num_predict,
            retry=args.retry,
            rss_baseline=settle(server, pids, args.timeout),
        )
        print(f"baseline: server + runner {report.rss_baseline / MiB:.0f} MiB (pids {pids})")
        for index in range(args.rounds):
            results, seconds = asyncio.run(burst(server, args))
            served = sorted(s for outcome, _, s in results if outcome == "served")
            if server.runner_pids() != pids[1:]:
                print(f"note: runners changed from {pids[1:]} to {server.runner_pids()}")
                pids = [server.proc.pid, *server.runner_pids()]
            one_round = Round(
                outcomes=dict(collections.Counter(outcome for outcome, _, _ in results)),
                seconds=round(seconds, 2),
                attempts=sum(a for _, a, _ in results),
                rss_after=settle(server, pids, args.timeout),
                served_latency_p50=round(served[len(served) // 2], 2) if served else 0.0,
                served_latency_max=round(served[-1], 2) if served else 0.0,
            )
            report.rounds.append(one_round)
            print(
                f"round {index + 1}: {one_round.outcomes} in {seconds:.1f} s ({one_round.attempts} attempts), "
                f"served latency p50 {one_round.served_latency_p50} s max {one_round.served_latency_max} s, "
                f"memory {one_round.rss_after / MiB:.0f} MiB"
            )
        report.server_errors = server_errors(server)
    finally:
        server.stop()
    failures = report.failures(args.memory_slack)
    print(json.dumps(asdict(report), indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    for failure in failures:
        print("FAIL:", failure)
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
