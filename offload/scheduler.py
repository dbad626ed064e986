"""Which runner serves a model: load on first use, keep it for keep_alive, reload it when it died.

Policy is small here and pure where it decides (`wanted_context`, `expired`); effects (spawning runners) go
through `runner_factory` so tests inject fake runners. Memory budgets, eviction and queue limits belong to the
planner/scheduler work that builds on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from offload.backend_plan import BackendPlan, Candidate, gpu_layers_for, plan_for
from offload.config import Settings
from offload.durations import parse_keep_alive
from offload.errors import BackendUnusable
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.models.gguf import read_gguf
from offload.models.store import StoredModel
from offload.planner import Plan as MemoryPlan
from offload.planner import budgets_from, compare, model_memory
from offload.planner import plan as plan_memory
from offload.runner.placement import is_gpu_device
from offload.runner.process import RunnerProcess
from offload.runner.protocol import LoadedInfo, LoadOptions

log = logging.getLogger("offload.scheduler")
_REAP_INTERVAL = 1.0
MIN_AUTO_CTX = 2048  # on "auto" the planner may shrink the context to this before it moves layers off the GPU
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class Runner(Protocol):
    info: LoadedInfo | None

    async def start(self, timeout: float) -> LoadedInfo: ...
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...
    async def embed(self, request: EmbedRequest) -> EmbedResult: ...
    async def tokenize(self, text: str) -> list[int]: ...
    def has_exited(self) -> bool: ...
    async def close(self) -> None: ...


RunnerFactory = Callable[[LoadOptions, str, Path | None], Runner]
PlanFactory = Callable[[Settings], BackendPlan]


def _spawn(options: LoadOptions, name: str, library_path: Path | None) -> Runner:
    return RunnerProcess(options, name=name, library_path=library_path)


@dataclass(frozen=True, slots=True)
class RunningModel:
    name: str
    model_digest: str
    size: int
    size_vram: int
    expires_at: datetime
    context_length: int
    placement: dict[str, Any]


@dataclass
class _Loaded:
    model: StoredModel
    runner: Runner
    info: LoadedInfo
    keep_alive: float
    n_ctx: int  # as requested; llama.cpp may round the context it allocates
    num_gpu: int | None = None  # as requested (None: the server's setting)
    fallbacks: tuple[str, ...] = ()  # "cuda: <why it could not run>" for each backend skipped on the way
    warning: str | None = None  # said loudly when GPU layers were asked for and none landed
    active: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def expires_at(self) -> datetime:
        if self.active or math.isinf(self.keep_alive):
            return _FAR_FUTURE
        remaining = self.keep_alive - (time.monotonic() - self.idle_since)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, remaining))


def running_model(name: str, entry: _Loaded) -> RunningModel:
    """What /api/ps shows of a loaded model: sizes from the runner's load report, not from estimates."""
    info = entry.info
    report = info.placement or {}
    devices = report.get("devices", [])
    total = sum(sum(d["buffers"].values()) for d in devices) or info.model_size
    on_gpu = sum(sum(d["buffers"].values()) for d in devices if is_gpu_device(str(d["name"])))
    return RunningModel(
        name=name,
        model_digest=entry.model.model_digest,
        size=total,
        size_vram=on_gpu,
        expires_at=entry.expires_at(),
        context_length=info.n_ctx,
        placement={
            "backend": info.backend,
            "layers_on_gpu": info.layers_on_gpu,
            "layers_total": report.get("layers_total") or info.n_layer + 1,
            "devices": devices,
            "verified": bool(report.get("verified")),
            "gpu_memory": info.gpu_memory,
            "fallbacks": list(entry.fallbacks),
            "warning": entry.warning,
        },
    )


def wanted_context(requested: int | None, default: int, trained: int | None) -> int:
    """The context to load with: what was asked, else the default; never beyond what the model was trained for."""
    n_ctx = requested if requested and requested > 0 else default
    return min(n_ctx, trained) if trained else n_ctx


def expired(entry_active: int, keep_alive: float, idle_for: float) -> bool:
    return entry_active == 0 and not math.isinf(keep_alive) and idle_for >= keep_alive


class Scheduler:
    def __init__(
        self, settings: Settings, runner_factory: RunnerFactory = _spawn, plan_factory: PlanFactory = plan_for
    ) -> None:
        self.settings = settings
        self._factory = runner_factory
        self._plan_factory = plan_factory
        self._plan: BackendPlan | None = None
        self._loaded: dict[str, _Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._default_keep_alive = parse_keep_alive(settings.keep_alive, param="OFFLOAD_KEEP_ALIVE") or 0.0
        self._reaper: asyncio.Task[None] | None = None

    def prepare(self) -> BackendPlan:
        """Decide the backend order now (probes hardware and variants, ~1 s), so the server states it at start and
        a variant that breaks later is met by a runner exit and a fallback, not by a silently different plan."""
        if self._plan is None:
            self._plan = self._plan_factory(self.settings)
        return self._plan

    # ---- what the API calls --------------------------------------------------------------------------------
    async def generate(self, model: StoredModel, request: GenerateRequest) -> AsyncIterator[Chunk]:
        entry, load_ns = await self._acquire(model, request.num_ctx, request.keep_alive, request.num_gpu)
        try:
            async for chunk in entry.runner.generate(request):
                yield dataclasses.replace(chunk, load_duration=load_ns) if chunk.done else chunk
        finally:
            await self._release(entry)

    async def embed(self, model: StoredModel, request: EmbedRequest) -> EmbedResult:
        entry, load_ns = await self._acquire(model, request.num_ctx, request.keep_alive, request.num_gpu)
        try:
            result = await entry.runner.embed(request)
        finally:
            await self._release(entry)
        return dataclasses.replace(result, load_duration=load_ns)

    async def tokenize(self, model: StoredModel, text: str) -> list[int]:
        entry, _ = await self._acquire(model, None, None)
        try:
            return await entry.runner.tokenize(text)
        finally:
            await self._release(entry)

    async def load(self, model: StoredModel, keep_alive: float | None) -> int:
        entry, load_ns = await self._acquire(model, None, keep_alive)
        await self._release(entry)
        return load_ns

    async def unload(self, name: str, *, only_if_idle: bool = False, only: _Loaded | None = None) -> bool:
        """Stop the runner serving `name`; with `only`, just when that very entry is still the one loaded."""
        async with self._lock(name):
            entry = self._loaded.get(name)
            if entry is None or (only_if_idle and entry.active) or (only is not None and entry is not only):
                return False
            del self._loaded[name]
        await entry.runner.close()
        log.info("unloaded %s", name)
        return True

    def running(self) -> list[RunningModel]:
        return [
            running_model(name, entry) for name, entry in self._loaded.items() if not entry.runner.has_exited()
        ]

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        entries = list(self._loaded.values())
        self._loaded.clear()
        await asyncio.gather(*(entry.runner.close() for entry in entries), return_exceptions=True)

    # ---- internals -----------------------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _acquire(
        self, model: StoredModel, num_ctx: int | None, keep_alive: float | None, num_gpu: int | None = None
    ) -> tuple[_Loaded, int]:
        """A ready runner for `model`, counted as busy until `_release`; also the load time if one was started."""
        self._ensure_reaper()
        name = model.name.display
        async with self._lock(name):
            entry = self._loaded.get(name)
            n_ctx = wanted_context(num_ctx, self.settings.num_ctx, entry.info.n_ctx_train if entry else None)
            if entry is not None and self._must_reload(entry, model, n_ctx, num_gpu):
                self._loaded.pop(name)
                await entry.runner.close()
                entry = None
            load_ns = 0
            if entry is None:
                started = time.perf_counter_ns()
                entry = await self._start(model, n_ctx, num_gpu)
                load_ns = time.perf_counter_ns() - started
                self._loaded[name] = entry
            if keep_alive is not None:
                entry.keep_alive = math.inf if keep_alive < 0 else keep_alive
            entry.active += 1
            return entry, load_ns

    def _must_reload(self, entry: _Loaded, model: StoredModel, n_ctx: int, num_gpu: int | None) -> bool:
        if entry.runner.has_exited():
            log.warning("runner for %s had exited; starting a new one", model.name)
            return True
        # A new file under the same name, or a different context size: only an idle runner is swapped; a busy
        # one keeps serving until its requests are done.
        if entry.active:
            return False
        changed_gpu = num_gpu is not None and num_gpu != entry.num_gpu
        return entry.model.model_digest != model.model_digest or entry.n_ctx != n_ctx or changed_gpu

    async def _start(self, model: StoredModel, n_ctx: int, num_gpu: int | None) -> _Loaded:
        """Try the plan's backends in order. A runner that exits 78 (backend unusable) is followed at once by the
        next candidate, loudly; a backend the user forced gets an error instead of a fallback."""
        plan = self._plan if self._plan is not None else await asyncio.to_thread(self.prepare)
        if not plan.candidates:
            raise BackendUnusable(f"no backend can load {model.name}: {plan.reason}")
        fallbacks: list[str] = []
        for candidate in plan.candidates:
            layers = gpu_layers_for(candidate.backend, num_gpu, self.settings.gpu_layers)
            memory_plan = await asyncio.to_thread(self._fit, model, candidate, plan, n_ctx, num_gpu)
            load_ctx = n_ctx
            if memory_plan is not None:
                layers, load_ctx = memory_plan.n_gpu_layers, memory_plan.n_ctx
                log.info("memory plan for %s on %s: %s", model.name, candidate.backend, memory_plan.reason)
            options = LoadOptions(
                model_path=str(model.model_path),
                n_ctx=load_ctx,
                n_batch=self.settings.num_batch,
                n_threads=self.settings.num_threads,
                n_gpu_layers=layers,
                backend=candidate.backend,
            )
            runner = self._factory(options, model.name.display, candidate.library_path)
            try:
                info = await runner.start(self.settings.runner_start_timeout)
            except BackendUnusable as exc:
                # A forced plan holds only the requested backend's variants: trying the next is not a fallback.
                fallbacks.append(f"{candidate.backend}: {exc.message}")
                log.warning("FALLBACK: backend %s cannot run %s: %s", candidate.backend, model.name, exc.message)
                continue
            if memory_plan is not None:
                measured = {d["name"]: sum(d["buffers"].values()) for d in (info.placement or {}).get("devices", [])}
                ratios = ", ".join(f"{name} {ratio:.3f}" for name, ratio in compare(memory_plan, measured).items())
                log.info("memory measured/predicted for %s: %s", model.name, ratios or "n/a")
            return self._loaded_entry(model, runner, info, n_ctx, num_gpu, layers, tuple(fallbacks))
        tried = "; ".join(fallbacks)
        if plan.forced:
            requested = plan.candidates[0].backend
            raise BackendUnusable(f"backend {requested} was requested but cannot run {model.name}: {tried}")
        raise BackendUnusable(f"no backend could load {model.name}: {tried}")

    def _fit(
        self, model: StoredModel, candidate: Candidate, plan: BackendPlan, n_ctx: int, num_gpu: int | None
    ) -> MemoryPlan | None:
        """The memory planner's layers and context for a GPU backend left on "auto" (blocking: reads the GGUF).
        None when the user fixed the layers, for the CPU, or when the plan has no hardware snapshot."""
        if candidate.backend == "cpu" or num_gpu is not None or self.settings.gpu_layers != "auto":
            return None
        if plan.machine is None:
            return None
        gguf = read_gguf(model.model_path)
        return plan_memory(
            model_memory(gguf),
            budgets_from(plan.machine, candidate.backend),
            n_ctx=n_ctx,
            num_ctx_min=min(MIN_AUTO_CTX, n_ctx),
            num_ctx_max=gguf.context_length,
            n_ubatch=self.settings.num_batch,
        )

    def _loaded_entry(
        self,
        model: StoredModel,
        runner: Runner,
        info: LoadedInfo,
        n_ctx: int,
        num_gpu: int | None,
        layers_asked: int,
        fallbacks: tuple[str, ...],
    ) -> _Loaded:
        warning = None
        if layers_asked and info.layers_on_gpu == 0:
            warning = f"{layers_asked} GPU layers were asked for, but every layer runs on the CPU"
            log.error("GPU NOT USED for %s: %s (devices: %s)", model.name, warning, ", ".join(info.devices))
        devices = (info.placement or {}).get("devices", [])
        log.info(
            "inference compute model=%s backend=%s layers_on_gpu=%d/%d devices=%s ctx=%d weights=%.1fMiB "
            "gpu_memory=%s load=%.2fs%s",
            model.name, info.backend, info.layers_on_gpu, info.n_layer + 1,
            ",".join(f"{d['name']}:{d['layers']}" for d in devices),
            info.n_ctx, info.model_size / 2**20,
            f"{info.gpu_memory / 2**20:.0f}MiB" if info.gpu_memory is not None else "n/a",
            info.load_duration / 1e9, f" after fallback from {'; '.join(fallbacks)}" if fallbacks else "",
        )
        trained = info.n_ctx_train
        return _Loaded(
            model=model,
            runner=runner,
            info=info,
            keep_alive=self._default_keep_alive,
            n_ctx=min(n_ctx, trained) if trained else n_ctx,
            num_gpu=num_gpu,
            fallbacks=fallbacks,
            warning=warning,
        )

    async def _release(self, entry: _Loaded) -> None:
        entry.active -= 1
        entry.idle_since = time.monotonic()
        if entry.active == 0 and entry.keep_alive <= 0:
            await self.unload(entry.model.name.display, only_if_idle=True, only=entry)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="offload-keepalive")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_REAP_INTERVAL)
            now = time.monotonic()
            for name, entry in list(self._loaded.items()):
                if expired(entry.active, entry.keep_alive, now - entry.idle_since):
                    with contextlib.suppress(Exception):
                        await self.unload(name, only_if_idle=True)
