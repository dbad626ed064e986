"""A scheduler that runs no model: it yields scripted chunks and records what it was asked.

Satisfies `offload.api.deps.SchedulerLike`; usable by any test that needs the API without a runner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from offload.errors import OffloadError
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.models.store import StoredModel

Script = Sequence[Chunk] | Callable[[GenerateRequest], Sequence[Chunk]]


def default_script(request: GenerateRequest) -> list[Chunk]:
    """ "Hello", " world", then a final "!" with counts (and a context when the request asks for one)."""
    return [
        Chunk(text="Hello"),
        Chunk(text=" world"),
        Chunk(
            text="!",
            done=True,
            done_reason="stop",
            prompt_eval_count=5,
            prompt_cached_count=2,
            prompt_eval_duration=1_000,
            eval_count=3,
            eval_duration=2_000,
            load_duration=7,
            context=(1, 2, 3) if request.return_context else None,
        ),
    ]


@dataclass(frozen=True, slots=True)
class FakeRunningModel:
    name: str
    model_digest: str
    size: int = 1000
    size_vram: int = 0
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(minutes=5))
    context_length: int = 256
    placement: dict[str, Any] = field(
        default_factory=lambda: {
            "backend": "cpu",
            "layers_on_gpu": 0,
            "layers_total": 1,
            "devices": [],
            "verified": True,
        }
    )


class FakeScheduler:
    """Scripted generations. `fail_before` raises before the first chunk; `fail_after=(n, error)` raises
    after n chunks.

    Records: `requests` (GenerateRequest), `embeds`, `loads` (name, keep_alive), `unloads`; `finished` and
    `closed_early` count generations that ran to their end or were closed/cancelled by the consumer.
    """

    def __init__(
        self,
        script: Script = default_script,
        *,
        fail_before: OffloadError | None = None,
        fail_after: tuple[int, OffloadError] | None = None,
        embedding: Sequence[float] = (3.0, 4.0),
        load_duration: int = 42,
    ) -> None:
        self.script = script
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.embedding = tuple(embedding)
        self.load_duration = load_duration
        self.requests: list[GenerateRequest] = []
        self.models: list[StoredModel] = []
        self.embeds: list[EmbedRequest] = []
        self.loads: list[tuple[str, float | None]] = []
        self.unloads: list[str] = []
        self.running_models: list[FakeRunningModel] = []
        self.finished = 0
        self.closed_early = 0
        self.problems: dict[str, str] = {}  # what health() reports
        self.closed = False

    async def generate(self, model: StoredModel, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.models.append(model)
        self.requests.append(request)
        chunks = self.script(request) if callable(self.script) else self.script
        completed = False
        try:
            if self.fail_before is not None:
                raise self.fail_before
            for index, chunk in enumerate(chunks):
                if self.fail_after is not None and index == self.fail_after[0]:
                    raise self.fail_after[1]
                yield chunk
            completed = True
        finally:
            if completed:
                self.finished += 1
            else:
                self.closed_early += 1

    async def embed(self, model: StoredModel, request: EmbedRequest) -> EmbedResult:
        self.models.append(model)
        self.embeds.append(request)
        if self.fail_before is not None:
            raise self.fail_before
        return EmbedResult(
            embeddings=tuple(self.embedding for _ in request.inputs),
            prompt_eval_count=2 * len(request.inputs),
            load_duration=self.load_duration,
        )

    async def tokenize(self, model: StoredModel, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def load(self, model: StoredModel, keep_alive: float | None) -> int:
        self.loads.append((str(model.name), keep_alive))
        if self.fail_before is not None:
            raise self.fail_before
        return self.load_duration

    async def unload(self, name: str) -> bool:
        self.unloads.append(name)
        loaded = any(r.name == name for r in self.running_models)
        self.running_models = [r for r in self.running_models if r.name != name]
        return loaded

    def running(self) -> list[FakeRunningModel]:
        return list(self.running_models)

    async def health(self) -> dict[str, str]:
        return dict(self.problems)

    async def close(self) -> None:
        self.closed = True
