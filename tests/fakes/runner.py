"""A runner that runs no model: it satisfies `offload.scheduler.Runner` with scripted chunks.

`FakeRunnerFactory` is what a test hands to `Scheduler(settings, runner_factory=...)`; it keeps every runner it
made, so a test can count starts and closes, make one "die" (`has_exited()` turns true), fail a start, or hold a
generation open mid-stream to keep the runner busy. Like the real runner, it decodes at most `n_seq_max`
generations at once (the others wait for a free slot) and reports the context of one sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offload.errors import OffloadError, RunnerCrashed, RunnerError
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.runner.placement import LoadReport
from offload.runner.protocol import LoadedInfo, LoadOptions

Script = Callable[[GenerateRequest], Sequence[Chunk]]


def default_script(request: GenerateRequest) -> list[Chunk]:
    """Two text chunks, then a final one with counts (a context when the request asks for one)."""
    return [
        Chunk(text="Hello"),
        Chunk(text=" world"),
        Chunk(
            done=True,
            done_reason="stop",
            prompt_eval_count=4,
            eval_count=2,
            context=(1, 2, 3) if request.return_context else None,
        ),
    ]


@dataclass
class FakeRunner:
    options: LoadOptions
    name: str
    script: Script = default_script
    n_layer: int = 4
    n_ctx_train: int = 32768
    model_size: int = 123_456
    start_delay: float = 0.001
    fail_start: OffloadError | None = None
    # Decides per load (by its options) whether the start fails, e.g. out of memory above some layer count.
    fail_start_if: Callable[[LoadOptions], OffloadError | None] | None = None
    # With a GPU backend and n_gpu_layers > 0 the load report puts those layers on this device (weights there),
    # and NVML's number for the process is gpu_memory; None: every layer on the CPU, as a CPU-only build does.
    gpu_device: str | None = None
    gpu_memory: int | None = None
    # Raised after the first chunk of every generation (a runner dying mid-stream).
    fail_mid_stream: OffloadError | None = None
    # When set, every generation waits on it after its first chunk: the runner stays busy until the test says so.
    gate: asyncio.Event | None = None
    wedged: bool = False  # ping() never answers (a stopped process)
    busy: float = 0.0  # what ping() reports: seconds inside the current step
    info: LoadedInfo | None = None
    library_path: Path | None = None
    starts: int = 0
    closes: int = 0
    exited: bool = False
    requests: list[GenerateRequest] = field(default_factory=list)
    decoding: int = 0  # generations holding a slot now
    most_decoding: int = 0  # the most that ever held one at once
    _slots: asyncio.Semaphore | None = None

    async def start(self, timeout: float) -> LoadedInfo:
        self.starts += 1
        await asyncio.sleep(self.start_delay)
        failure = self.fail_start or (self.fail_start_if(self.options) if self.fail_start_if else None)
        if failure is not None:
            self.exited = True
            raise failure
        # As runner/__main__.py: the context is shared by n_seq_max sequences; each gets (and reports) its share.
        per_sequence = max(1, self.options.n_ctx // self.options.n_seq_max)
        n_ctx = min(per_sequence, self.n_ctx_train) if self.n_ctx_train else per_sequence
        layers_total = self.n_layer + 1
        on_gpu = 0
        report = LoadReport(layers={"CPU": layers_total}, buffers={"CPU": {"model": self.model_size}})
        if self.gpu_device and self.options.backend != "cpu" and self.options.n_gpu_layers > 0:
            on_gpu = min(self.options.n_gpu_layers, layers_total)
            report = LoadReport(
                layers={self.gpu_device: on_gpu, "CPU": layers_total - on_gpu},
                buffers={self.gpu_device: {"model": self.model_size}, "CPU": {"model": 1000}},
            )
        self.info = LoadedInfo(
            n_ctx=n_ctx,
            n_ctx_train=self.n_ctx_train,
            n_layer=self.n_layer,
            n_embd=8,
            n_vocab=100,
            model_size=self.model_size,
            load_duration=1_000,
            supports_gpu_offload=on_gpu > 0,
            layers_on_gpu=on_gpu,
            backend=self.options.backend if on_gpu else "cpu",
            devices=(self.gpu_device, "CPU") if self.gpu_device else ("CPU",),
            placement=report.to_json(),  # what the real runner reads from llama.cpp's load report
            gpu_memory=self.gpu_memory if on_gpu else None,
        )
        return self.info

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.options.n_seq_max)
        async with self._slots:
            self.decoding += 1
            self.most_decoding = max(self.most_decoding, self.decoding)
            try:
                for i, chunk in enumerate(self.script(request)):
                    yield chunk
                    if i == 0:
                        if self.fail_mid_stream is not None:
                            self.exited = True
                            raise self.fail_mid_stream
                        if self.gate is not None:
                            await self.gate.wait()
            finally:
                self.decoding -= 1

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return EmbedResult(
            embeddings=tuple((float(len(text)), 1.0) for text in request.inputs),
            prompt_eval_count=sum(len(text) for text in request.inputs),
        )

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def ping(self, timeout: float) -> float:
        if self.exited:
            raise RunnerCrashed(f"runner for {self.name} is not running")
        if self.wedged:
            await asyncio.sleep(timeout)
            raise RunnerError(f"runner for {self.name} did not answer within {timeout:.0f} s")
        return self.busy

    def has_exited(self) -> bool:
        return self.exited

    def die(self) -> None:
        """As if the process had been killed: the scheduler should notice on the next request."""
        self.exited = True

    async def close(self) -> None:
        self.closes += 1
        self.exited = True


@dataclass
class FakeRunnerFactory:
    """Callable as the scheduler's `runner_factory`; `configure` adjusts each runner before it is handed out."""

    configure: Callable[[FakeRunner], None] | None = None
    runners: list[FakeRunner] = field(default_factory=list)

    def __call__(self, options: LoadOptions, name: str, library_path: Path | None = None) -> FakeRunner:
        runner = FakeRunner(options, name, library_path=library_path)
        if self.configure is not None:
            self.configure(runner)
        self.runners.append(runner)
        return runner

    @property
    def starts(self) -> int:
        return sum(r.starts for r in self.runners)

    @property
    def closes(self) -> int:
        return sum(r.closes for r in self.runners)
