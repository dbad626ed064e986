"""Which runner serves a model: load on demand, share, queue, evict, reload, keep for keep_alive.

Contract, for every request (`_acquire` ... `_release`):
- Admission: at most `max_queue + parallel` requests per model are in flight, where parallel is the loaded
  model's slot count (before a load: the last one planned for it, else the setting, "auto" counting as 4); past
  that, ServerBusy (503 with Retry-After) at once.
- Slots: an explicit num_parallel is used as given; "auto" is decided per model at each load by the planner
  (planner.auto_parallel: 4, 2 or 1) and kept with the loaded entry.
- A loaded runner serves the request when it is alive, holds the same file, has at least the context asked
  for (per sequence) and the same forced num_gpu. Otherwise it is reloaded: at once when idle; when busy it is
  marked draining (no new request joins it) and swapped when its last request ends. Requests waiting for that
  hold nothing, so the runner always drains: no deadlock (Ollama #14407, #17408).
- A model that is not loaded is planned against the machine as if offload held nothing (the memory planner),
  then `eviction.make_room` picks idle models to unload, least recently used first, until the plan fits in what
  offload may use and the model count stays under max_loaded_models. A model serving a request is never
  unloaded; when only such models are in the way, the request waits until one goes idle.
- One load at a time (with the unloads it needs): memory is only measured once a runner has loaded, so two
  loads planned together could both count the same free bytes.
- A load that fails out of memory is retried once, planned against fresh free memory with the failing device
  shrunk by the allocation that failed; then the error is reported with both attempts' numbers.

State lives in `_loaded` and is changed only under `_cond`; runners are started and closed outside it.
Effects go through `runner_factory`, `plan_factory` and `snapshot_factory`, so tests inject fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offload.backend_plan import BackendPlan, Candidate, gpu_layers_for, plan_for
from offload.config import Settings
from offload.durations import parse_keep_alive
from offload.errors import BackendUnusable, InvalidGGUF, OutOfMemory, PlanRefused, RunnerError, ServerBusy
from offload.eviction import make_room
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.loaded import (
    Loaded,
    Runner,
    RunningModel,
    buffers_by_device,
    expired,
    measured_usage,
    running_model,
    wanted_context,
)
from offload.models.gguf import GGUFFile, read_gguf
from offload.models.store import FileIdentity, StoredModel, file_identity
from offload.planner import (
    CPU,
    DEFAULT_HEADROOM,
    GPU_OVERHEAD,
    DeviceBudget,
    ModelMemory,
    budgets_from,
    compare,
    gpu_total,
    model_memory,
    shrink_after_oom,
    usage_of,
)
from offload.planner import Plan as MemoryPlan
from offload.planner import plan as plan_memory
from offload.planner.lora import with_adapters
from offload.planner.parallel import AUTO_PARALLEL, auto_parallel
from offload.runner.placement import is_gpu_device
from offload.runner.process import RunnerProcess
from offload.runner.protocol import LoadedInfo, LoadOptions

if TYPE_CHECKING:
    from offload.hardware.devices import HardwareSnapshot

__all__ = ["Runner", "RunningModel", "Scheduler", "expired", "wanted_context"]

log = logging.getLogger("offload.scheduler")
_REAP_INTERVAL = 1.0
MIN_AUTO_CTX = 2048  # on "auto" the planner may shrink the context to this before it moves layers off the GPU
MODELS_PER_DEVICE = 3  # max_loaded_models 0: this many per GPU, or on the CPU
RETRY_AFTER_S = 2  # what a 503 tells the client to wait
HEALTH_TIMEOUT_S = 5.0  # a runner that does not answer a ping within this fails /health (stopped, or starved)
# A runner inside one decode step (one llama_decode of at most num_batch tokens, or one embedding) for longer fails
# /health: generous, since a big model's prompt chunk on a slow CPU takes tens of seconds.
STEP_LIMIT_S = 120.0

RunnerFactory = Callable[[LoadOptions, str, Path | None], Runner]
PlanFactory = Callable[[Settings], BackendPlan]
SnapshotFactory = Callable[[], "HardwareSnapshot"]


def _spawn(options: LoadOptions, name: str, library_path: Path | None) -> Runner:
    return RunnerProcess(options, name=name, library_path=library_path)


def _probe() -> HardwareSnapshot:
    from offload.hardware.probe import snapshot

    return snapshot()


@dataclass(frozen=True, slots=True)
class _Target:
    """What a load of one model will take, decided before any memory is freed for it."""

    n_ctx: int  # per sequence, as requested
    ctx_forced: bool  # the request named it: the planner moves layers rather than shrink it
    plan: MemoryPlan | None  # the planner's layers and context ("auto" layers on a GPU backend); None otherwise
    need: Mapping[str, int]  # bytes per device; empty when the machine is unknown (only the model count limits)
    parallel: int  # sequence slots: the setting, or what "auto" chose for this load


def _weights(model: StoredModel, gguf: GGUFFile) -> ModelMemory:
    """The model's weights per layer from its tensor table, its LoRA adapters' included (blocking: reads them)."""
    return with_adapters(model_memory(gguf), [read_gguf(adapter.path) for adapter in model.adapters])


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        runner_factory: RunnerFactory = _spawn,
        plan_factory: PlanFactory = plan_for,
        snapshot_factory: SnapshotFactory = _probe,
        *,
        verify: Callable[[StoredModel], None] | None = None,
    ) -> None:
        self.settings = settings
        self._factory = runner_factory
        self._verify = verify  # catalog.verify: the GGUF still matches its digest (blocking); None: not checked
        self._plan_factory = plan_factory
        self._snapshot = snapshot_factory
        self._plan: BackendPlan | None = None
        self._loaded: dict[str, Loaded] = {}
        self._cond = asyncio.Condition()
        self._loading = False  # a load (and the unloads it needs) is under way
        self._in_flight: dict[str, int] = {}
        self._planned_parallel: dict[str, int] = {}  # per model, the slots its last load was planned with
        self._gpu_overhead: dict[str, int] = {}  # per backend, measured from NVML once a runner loaded
        self._budget: dict[str, int] = {}  # bytes offload may use per device with none of its models loaded
        self._default_keep_alive = parse_keep_alive(settings.keep_alive, param="OFFLOAD_KEEP_ALIVE") or 0.0
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False  # close() was called: nothing new is admitted or loaded

    def prepare(self) -> BackendPlan:
        """Decide the backend order now (probes hardware and variants, ~1 s), so the server states it at start and
        a variant that breaks later is met by a runner exit and a fallback, not by a silently different plan."""
        if self._plan is None:
            self._plan = self._plan_factory(self.settings)
            self._budget = self._budget_from(self._plan.machine)
        return self._plan

    # ---- what the API calls --------------------------------------------------------------------------------
    async def generate(self, model: StoredModel, request: GenerateRequest) -> AsyncIterator[Chunk]:
        entry, load_ns = await self._acquire(model, request.num_ctx, request.keep_alive, request.num_gpu)
        try:
            async for chunk in entry.runner.generate(request):
                yield dataclasses.replace(chunk, load_duration=load_ns) if chunk.done else chunk
        except RunnerError as exc:
            if self._closing:  # its runner was stopped by close(): say why
                raise self._shutting_down() from exc
            raise
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

    async def unload(self, name: str, *, only_if_idle: bool = False, only: Loaded | None = None) -> bool:
        """Stop the runner serving `name`; with `only`, just when that very entry is still the one loaded."""
        async with self._cond:
            entry = self._loaded.get(name)
            if entry is None or (only_if_idle and entry.active) or (only is not None and entry is not only):
                return False
            del self._loaded[name]
        await entry.runner.close()
        log.info("unloaded %s", name)
        async with self._cond:
            self._cond.notify_all()
        return True

    async def health(self) -> dict[str, str]:
        """What keeps each loaded model from generating, by name; empty when every runner answers a ping within
        HEALTH_TIMEOUT_S and is not stuck in one step for more than STEP_LIMIT_S. A runner that died counts until
        the next request for its model replaces it (or its keep_alive ends): the generation path is broken until
        then."""
        entries = list(self._loaded.items())
        found = await asyncio.gather(*(self._problem(entry) for _, entry in entries))
        return {name: problem for (name, _), problem in zip(entries, found, strict=True) if problem is not None}

    @staticmethod
    async def _problem(entry: Loaded) -> str | None:
        try:
            busy = await entry.runner.ping(HEALTH_TIMEOUT_S)
        except RunnerError as exc:
            return exc.message
        if busy > STEP_LIMIT_S:
            return f"its runner has been inside one step for {busy:.0f} s (stuck in llama.cpp?)"
        return None

    def running(self) -> list[RunningModel]:
        return [
            running_model(name, entry) for name, entry in self._loaded.items() if not entry.runner.has_exited()
        ]

    async def close(self) -> None:
        """Stop every runner; from now on requests get ServerBusy ("shutting down"), those waiting included, and
        generations that were running end with it. Idempotent."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        entries = list(self._loaded.values())
        self._loaded.clear()
        async with self._cond:
            self._cond.notify_all()
        await asyncio.gather(*(entry.runner.close() for entry in entries), return_exceptions=True)

    @staticmethod
    def _shutting_down() -> ServerBusy:
        return ServerBusy("the server is shutting down", retry_after=RETRY_AFTER_S)

    # ---- admission and placement ---------------------------------------------------------------------------
    def max_loaded(self) -> int:
        if self.settings.max_loaded_models:
            return self.settings.max_loaded_models
        gpus = sum(1 for device in self._budget if device != CPU)
        return MODELS_PER_DEVICE * max(1, gpus)

    def _fixed_parallel(self) -> int | None:
        """num_parallel when the user set a number; None on "auto"."""
        setting = self.settings.num_parallel
        return setting if isinstance(setting, int) else None

    def parallel_of(self, name: str) -> int:
        """The slots `name` is served with: its loaded runner's, else the last planned, else the setting's."""
        entry = self._loaded.get(name)
        if entry is not None:
            return entry.parallel
        return self._planned_parallel.get(name) or self._fixed_parallel() or AUTO_PARALLEL

    def _admit(self, name: str) -> None:
        in_flight = self._in_flight.get(name, 0)
        parallel = self.parallel_of(name)
        limit = self.settings.max_queue + parallel
        if in_flight >= limit:
            raise ServerBusy(
                f"{name} has {in_flight} requests in flight ({parallel} served at once, "
                f"{self.settings.max_queue} may wait: OFFLOAD_MAX_QUEUE); retry later",
                retry_after=RETRY_AFTER_S,
            )
        self._in_flight[name] = in_flight + 1

    def _leave(self, name: str) -> None:
        left = self._in_flight.get(name, 1) - 1
        if left > 0:
            self._in_flight[name] = left
        else:
            self._in_flight.pop(name, None)

    async def _acquire(
        self, model: StoredModel, num_ctx: int | None, keep_alive: float | None, num_gpu: int | None = None
    ) -> tuple[Loaded, int]:
        """A ready runner for `model`, counted as busy until `_release`; also the load time if one was started."""
        if self._closing:
            raise self._shutting_down()
        self._ensure_reaper()
        name = model.name.display
        self._admit(name)
        try:
            entry, load_ns = await self._place(model, name, num_ctx, num_gpu)
        except BaseException:
            self._leave(name)
            raise
        if keep_alive is not None:
            entry.keep_alive = math.inf if keep_alive < 0 else keep_alive
        return entry, load_ns

    def _serves(self, entry: Loaded, model: StoredModel, n_ctx: int, num_gpu: int | None) -> bool:
        changed_gpu = num_gpu is not None and num_gpu != entry.num_gpu
        return (
            not entry.draining
            and entry.model.model_digest == model.model_digest
            # Re-created with other LoRA adapters under the same name: another model, so another runner.
            and entry.model.adapters == model.adapters
            and entry.n_ctx >= n_ctx
            and not changed_gpu
            # Replaced, truncated or written to since it was verified: reload, which verifies it again.
            and file_identity(model.model_path) == entry.file
        )

    async def _place(
        self, model: StoredModel, name: str, num_ctx: int | None, num_gpu: int | None
    ) -> tuple[Loaded, int]:
        target: _Target | None = None
        waiting_said = False
        while True:
            async with self._cond:
                if self._closing:
                    raise self._shutting_down()
                entry = self._loaded.get(name)
                if entry is not None and entry.runner.has_exited():
                    log.warning("runner for %s had exited; starting a new one", name)
                    del self._loaded[name]
                    self._close_later(entry)
                    entry = None
                n_ctx = wanted_context(num_ctx, self.settings.num_ctx, entry.info.n_ctx_train if entry else None)
                if entry is not None:
                    if self._serves(entry, model, n_ctx, num_gpu):
                        entry.active += 1
                        return entry, 0
                    if entry.active:  # swap it once its requests are done; nobody new joins it meanwhile
                        entry.draining = True
                        await self._cond.wait()
                        continue
                if self._loading:
                    await self._cond.wait()
                    continue
                if target is not None and target.n_ctx == n_ctx:
                    others = [e.resident(n) for n, e in self._loaded.items() if n != name]
                    decision = make_room(target.need, self._budget, others, self.max_loaded())
                    if decision.wait:
                        if not waiting_said:
                            log.info("%s waits for memory: %s", name, decision.reason)
                            waiting_said = True
                        await self._cond.wait()
                        continue
                    evicted = [(n, self._loaded.pop(n)) for n in decision.evict]
                    if entry is not None:
                        evicted.append((name, self._loaded.pop(name)))  # the idle runner being replaced
                    self._loading = True
                    if decision.evict or not decision.fits:
                        log.info("placing %s: %s", name, decision.reason)
                    break
            # Reading the GGUF and planning block: done outside the lock, then the decision is taken again.
            try:
                target = await asyncio.to_thread(self._target, model, n_ctx, num_gpu, bool(num_ctx))
            except InvalidGGUF:
                # A stored model's GGUF passed when it was stored: if it fails now, its file changed on disk, which
                # the check says (CorruptBlob) rather than blaming the request with a 400.
                await asyncio.to_thread(self._verified_file, model)
                raise
        try:
            file = await asyncio.to_thread(self._verified_file, model)
            for evicted_name, old in evicted:
                await old.runner.close()
                log.info("unloaded %s to make room for %s", evicted_name, name)
            started = time.perf_counter_ns()
            entry = await self._start(model, target, num_gpu)
            entry.file = file
            load_ns = time.perf_counter_ns() - started
        except BaseException:
            async with self._cond:
                self._loading = False
                self._cond.notify_all()
            raise
        async with self._cond:
            self._loading = False
            self._cond.notify_all()
            if not self._closing:
                entry.active += 1
                self._loaded[name] = entry
                return entry, load_ns
        await entry.runner.close()  # loaded while the server was shutting down: nobody may use it
        raise self._shutting_down()

    def _verified_file(self, model: StoredModel) -> FileIdentity | None:
        """The GGUF file about to be loaded, checked against its digest (`verify`; blocking). CorruptBlob when it
        changed on disk; the identity is taken first, so a change during the check is seen at the next request."""
        file = file_identity(model.model_path)
        if self._verify is not None:
            self._verify(model)
        return file

    def _close_later(self, entry: Loaded) -> None:
        task = asyncio.get_running_loop().create_task(entry.runner.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _release(self, entry: Loaded) -> None:
        self._leave(entry.model.name.display)
        async with self._cond:
            entry.active -= 1
            entry.idle_since = time.monotonic()
            self._cond.notify_all()
        if entry.active == 0 and entry.keep_alive <= 0:
            await self.unload(entry.model.name.display, only_if_idle=True, only=entry)

    # ---- memory --------------------------------------------------------------------------------------------
    def _primary(self) -> Candidate | None:
        plan = self._plan
        return plan.candidates[0] if plan is not None and plan.candidates else None

    def _budgets(self, machine: HardwareSnapshot, backend: str) -> tuple[DeviceBudget, ...]:
        if backend == "cpu":
            return (DeviceBudget(CPU, machine.cpu.memory_available),)
        limit = self.settings.gpu_memory_limit
        return budgets_from(
            machine,
            backend,
            limit=int(limit) if limit is not None else None,
            overhead=self._gpu_overhead.get(backend, GPU_OVERHEAD.get(backend, 0)),
        )

    def _budget_from(self, machine: HardwareSnapshot | None) -> dict[str, int]:
        primary = self._primary()
        if machine is None or primary is None:
            return {}
        return {b.name: b.allowed(DEFAULT_HEADROOM) for b in self._budgets(machine, primary.backend)}

    def _target(self, model: StoredModel, n_ctx: int, num_gpu: int | None, ctx_forced: bool) -> _Target:
        """Plan the load for the primary backend on the machine as if offload held nothing (blocking: reads
        the GGUF). A context the request asked for is kept (layers move instead); the server's default may shrink.
        PlanRefused when the model cannot fit even then."""
        plan = self._plan if self._plan is not None else self.prepare()
        primary = self._primary()
        if plan.machine is None or primary is None:  # no memory to size slots by: the setting, or 4 on "auto"
            parallel = self._fixed_parallel() or AUTO_PARALLEL
            return _Target(n_ctx=n_ctx, ctx_forced=ctx_forced, plan=None, need={}, parallel=parallel)
        memory_plan, parallel = self._fit(model, primary, plan.machine, n_ctx, num_gpu, ctx_forced=ctx_forced)
        self._planned_parallel[model.name.display] = parallel
        if memory_plan is not None:
            need = {name: use.total for name, use in memory_plan.usage.items()}
            return _Target(n_ctx=n_ctx, ctx_forced=ctx_forced, plan=memory_plan, need=need, parallel=parallel)
        layers = gpu_layers_for(primary.backend, num_gpu, self.settings.gpu_layers)
        usage = usage_of(
            _weights(model, read_gguf(model.model_path)),
            self._budgets(plan.machine, primary.backend),
            n_gpu=layers,
            n_ctx=n_ctx,
            parallel=parallel,
            n_ubatch=self.settings.num_batch,
            flash_attn=not self.settings.batch_invariant,
            pipeline=self.settings.pipeline,
        )
        need = {name: use.total for name, use in usage.items()}
        return _Target(n_ctx=n_ctx, ctx_forced=ctx_forced, plan=None, need=need, parallel=parallel)

    def _fit(
        self,
        model: StoredModel,
        candidate: Candidate,
        machine: HardwareSnapshot,
        n_ctx: int,
        num_gpu: int | None,
        budgets: tuple[DeviceBudget, ...] | None = None,
        *,
        ctx_forced: bool = False,
        parallel: int | None = None,
    ) -> tuple[MemoryPlan | None, int]:
        """The memory planner's layers and context for a GPU backend (None for the CPU), and the sequence slots
        (blocking: reads the GGUF). Layers the user fixed (the request's num_gpu, the gpu_layers setting) are kept
        or refused with the numbers (PlanRefused); on "auto" the planner picks them. Slots: `parallel`, else the
        num_parallel setting, else (on "auto") planner.auto_parallel's choice for this backend."""
        fixed = parallel or self._fixed_parallel()
        cpu = candidate.backend == "cpu"
        if cpu and fixed:
            return None, fixed
        gguf = read_gguf(model.model_path)
        weights = _weights(model, gguf)
        budgets = budgets if budgets is not None else self._budgets(machine, candidate.backend)
        forced = None
        if not cpu and self._layers_forced(num_gpu):
            forced = gpu_layers_for(candidate.backend, num_gpu, self.settings.gpu_layers)

        def plan_with(slots: int) -> MemoryPlan:
            return plan_memory(
                weights,
                # On the CPU only its budget counts, at the context asked for: are `slots` KV caches too many?
                tuple(b for b in budgets if b.is_cpu) if cpu else budgets,
                n_ctx=n_ctx,
                parallel=slots,
                num_ctx_min=n_ctx if ctx_forced or cpu else min(MIN_AUTO_CTX, n_ctx),
                num_ctx_max=gguf.context_length,
                n_ubatch=self.settings.num_batch,
                flash_attn=not self.settings.batch_invariant,
                pipeline=self.settings.pipeline,
                headroom=DEFAULT_HEADROOM,
                num_gpu=forced,
            )

        if cpu:
            try:
                return None, auto_parallel(plan_with, n_ctx, gguf.context_length).parallel
            except PlanRefused:  # not even one slot fits: planned and placed as num_parallel 1 would be
                return None, 1
        if fixed:
            return plan_with(fixed), fixed
        chosen = auto_parallel(plan_with, n_ctx, gguf.context_length)
        return chosen, chosen.parallel

    def _layers_forced(self, num_gpu: int | None) -> bool:
        return num_gpu is not None or self.settings.gpu_layers != "auto"

    def _refresh_budget(self, measured: tuple[DeviceBudget, ...]) -> None:
        """After an out-of-memory load: from now on offload may use at most what is free now (`measured`) plus
        what its own runners hold."""
        for budget in measured:
            if budget.name in self._budget:
                held = sum(entry.usage.get(budget.name, 0) for entry in self._loaded.values())
                now = dataclasses.replace(budget, limit=None).allowed(DEFAULT_HEADROOM) + held
                self._budget[budget.name] = min(self._budget[budget.name], now)

    # ---- starting a runner ---------------------------------------------------------------------------------
    async def _start(self, model: StoredModel, target: _Target, num_gpu: int | None) -> Loaded:
        """Try the plan's backends in order. A runner that exits 78 (backend unusable) is followed at once by the
        next candidate, loudly; a backend the user forced gets an error instead of a fallback."""
        plan = self._plan if self._plan is not None else await asyncio.to_thread(self.prepare)
        if not plan.candidates:
            raise BackendUnusable(f"no backend can load {model.name}: {plan.reason}")
        fallbacks: list[str] = []
        for index, candidate in enumerate(plan.candidates):
            memory_plan, parallel = target.plan, target.parallel
            if index > 0 and plan.machine is not None:  # another backend: its own layers, and slots on "auto"
                memory_plan, parallel = await asyncio.to_thread(
                    functools.partial(
                        self._fit, model, candidate, plan.machine, target.n_ctx, num_gpu, ctx_forced=target.ctx_forced
                    )
                )
            elif index > 0:
                memory_plan = None
            try:
                return await self._start_on(model, candidate, memory_plan, parallel, target, num_gpu, fallbacks)
            except BackendUnusable as exc:
                # A forced plan holds only the requested backend's variants: trying the next is not a fallback.
                fallbacks.append(f"{candidate.backend}: {exc.message}")
                log.warning("FALLBACK: backend %s cannot run %s: %s", candidate.backend, model.name, exc.message)
        tried = "; ".join(fallbacks)
        if plan.forced:
            requested = plan.candidates[0].backend
            raise BackendUnusable(f"backend {requested} was requested but cannot run {model.name}: {tried}")
        raise BackendUnusable(f"no backend could load {model.name}: {tried}")

    async def _start_on(
        self,
        model: StoredModel,
        candidate: Candidate,
        memory_plan: MemoryPlan | None,
        parallel: int,
        target: _Target,
        num_gpu: int | None,
        fallbacks: list[str],
    ) -> Loaded:
        """Load on one backend with `parallel` slots; an out-of-memory load is retried once with a shrunk plan (the
        same slots: the retry moves layers and context, as it does for an explicit num_parallel)."""
        n_ctx = target.n_ctx
        try:
            return await self._run(model, candidate, memory_plan, parallel, n_ctx, num_gpu, fallbacks)
        except OutOfMemory as exc:
            if memory_plan is None or self._layers_forced(num_gpu):  # no smaller plan to try, or not ours to make
                raise
            first = exc
        log.warning("OUT OF MEMORY loading %s on %s: %s; retrying with a smaller plan", model.name,
                    candidate.backend, first.message)
        # The retry plans against free memory measured now, shrunk by the failed allocation where that memory was
        # there (planner.shrink_after_oom).
        fresh = await asyncio.to_thread(self._snapshot)
        measured = self._budgets(fresh, candidate.backend)
        self._refresh_budget(measured)
        budgets = shrink_after_oom(measured, memory_plan, first.device, first.requested)
        forced_ctx = target.ctx_forced
        replan = functools.partial(
            self._fit, model, candidate, fresh, n_ctx, None, budgets, ctx_forced=forced_ctx, parallel=parallel
        )
        try:
            smaller = (await asyncio.to_thread(replan))[0] or memory_plan
        except PlanRefused as refused:
            raise OutOfMemory(f"{first.message}; and no smaller plan fits: {refused.message}",
                              device=first.device, requested=first.requested) from refused
        log.info("retry plan for %s: %s (was %d layers, context %d)", model.name, smaller.reason,
                 memory_plan.n_gpu_layers, memory_plan.n_ctx)
        try:
            return await self._run(model, candidate, smaller, parallel, n_ctx, num_gpu, fallbacks)
        except OutOfMemory as second:
            raise OutOfMemory(
                f"{first.message}; retried with {smaller.n_gpu_layers} layers and context {smaller.n_ctx}: "
                f"{second.message}",
                device=second.device,
                requested=second.requested,
            ) from second

    async def _run(
        self,
        model: StoredModel,
        candidate: Candidate,
        memory_plan: MemoryPlan | None,
        parallel: int,
        n_ctx: int,
        num_gpu: int | None,
        fallbacks: list[str],
    ) -> Loaded:
        layers = gpu_layers_for(candidate.backend, num_gpu, self.settings.gpu_layers)
        load_ctx = n_ctx
        split: tuple[float, ...] = ()
        if memory_plan is not None:
            layers, load_ctx = memory_plan.n_gpu_layers, memory_plan.n_ctx
            split = memory_plan.tensor_split if len(memory_plan.tensor_split) > 1 else ()
            log.info("memory plan for %s on %s: %s", model.name, candidate.backend, memory_plan.reason)
        options = LoadOptions(
            model_path=str(model.model_path),
            n_ctx=load_ctx * parallel,  # llama.cpp splits the context among the sequences
            n_batch=self.settings.num_batch,
            n_threads=self.settings.num_threads,
            n_gpu_layers=layers,
            n_seq_max=parallel,
            backend=candidate.backend,
            tensor_split=split,
            batch_invariant=self.settings.batch_invariant,
            pipeline=self.settings.pipeline,
            lora_adapters=tuple((str(adapter.path), 1.0) for adapter in model.adapters),
        )
        runner = self._factory(options, model.name.display, candidate.library_path)
        info = await runner.start(self.settings.runner_start_timeout)
        overhead = self._learn_overhead(candidate.backend, info)
        if memory_plan is not None:
            self._log_accuracy(model, memory_plan, info)
        usage = measured_usage(info, overhead)
        return self._loaded_entry(
            model, runner, info, n_ctx, num_gpu, layers, tuple(fallbacks), usage, parallel=parallel
        )

    def _learn_overhead(self, backend: str, info: LoadedInfo) -> int:
        """A GPU runner's overhead beyond its buffers, from NVML: remembered per backend for later plans."""
        default = self._gpu_overhead.get(backend, GPU_OVERHEAD.get(backend, 0))
        used = [b for device, b in buffers_by_device(info).items() if b and is_gpu_device(device)]
        if info.gpu_memory is None or len(used) != 1:
            return default
        measured = info.gpu_memory - used[0]
        if 0 <= measured <= 8 * 2**30:
            if backend not in self._gpu_overhead:
                log.info("measured %s per-process overhead: %.0f MiB (planned with %.0f MiB)", backend,
                         measured / 2**20, default / 2**20)
            self._gpu_overhead[backend] = measured
            return measured
        return default

    def _log_accuracy(self, model: StoredModel, memory_plan: MemoryPlan, info: LoadedInfo) -> None:
        measured = compare(memory_plan, buffers_by_device(info))
        ratios = ", ".join(f"{name} {ratio:.3f}" for name, ratio in measured.items())
        nvml = ""
        if info.gpu_memory is not None and gpu_total(memory_plan):
            nvml = f"; GPU process memory (NVML) {info.gpu_memory / gpu_total(memory_plan):.3f}"
        log.info("memory measured/predicted for %s: buffers %s%s", model.name, ratios or "n/a", nvml)

    def _loaded_entry(
        self,
        model: StoredModel,
        runner: Runner,
        info: LoadedInfo,
        n_ctx: int,
        num_gpu: int | None,
        layers_asked: int,
        fallbacks: tuple[str, ...],
        usage: Mapping[str, int],
        *,
        parallel: int,
    ) -> Loaded:
        warning = None
        if layers_asked and info.layers_on_gpu == 0:
            warning = f"{layers_asked} GPU layers were asked for, but every layer runs on the CPU"
            log.error("GPU NOT USED for %s: %s (devices: %s)", model.name, warning, ", ".join(info.devices))
        devices = (info.placement or {}).get("devices", [])
        log.info(
            "inference compute model=%s backend=%s layers_on_gpu=%d/%d devices=%s ctx=%d parallel=%d "
            "weights=%.1fMiB gpu_memory=%s load=%.2fs%s",
            model.name, info.backend, info.layers_on_gpu, info.n_layer + 1,
            ",".join(f"{d['name']}:{d['layers']}" for d in devices),
            info.n_ctx, parallel, info.model_size / 2**20,
            f"{info.gpu_memory / 2**20:.0f}MiB" if info.gpu_memory is not None else "n/a",
            info.load_duration / 1e9, f" after fallback from {'; '.join(fallbacks)}" if fallbacks else "",
        )
        trained = info.n_ctx_train
        return Loaded(
            model=model,
            runner=runner,
            info=info,
            keep_alive=self._default_keep_alive,
            n_ctx=min(n_ctx, trained) if trained else n_ctx,
            usage=usage,
            num_gpu=num_gpu,
            fallbacks=fallbacks,
            warning=warning,
            parallel=parallel,
        )

    # ---- keep_alive ----------------------------------------------------------------------------------------
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
