"""The runner's decode loop: free of sockets and asyncio, it only turns requests into emitted messages.

Continuous batching: the context has `n_seq_max` sequence slots. One step =
`schedule()` admits waiting requests into free slots and drops cancelled ones, `_launch()` builds one llama.cpp
batch (the next token of every decoding sequence first, then prompt chunks of the sequences still prefilling, in
arrival order, up to n_batch tokens) and calls llama_decode once, `_collect()` samples each sequence's token from
its own output row and `postprocess()` turns it into chunks. So a request joins at the next step, a finished one
leaves, and a long prompt delays the other streams by at most one chunk per step. A request's limit is the
context's n_ctx_seq, the cells of its slot.

Batch invariance (`invariant`, config batch_invariant): a request gets the same tokens whatever is decoded beside
it. The runner turns off the CPU kernels whose sums depend on the batch (runner/__main__.py); what is left depends
only on the kind of evaluation a token gets: a generated token is always evaluated as one token of its sequence,
and a prompt token always in a chunk of at least two of its own. So decode tokens and each prompt chunk go to
llama_decode separately (in one call llama.cpp would cut a chunk to match the other sequences' one token), a
chunk never leaves a one-token rest, and prefix reuse evaluates at least the prompt's last two tokens again.

Prefix reuse: each slot remembers the tokens its KV cache holds; a new request takes the free slot whose cache
shares the longest prefix with its prompt (a chat's next turn lands where its last turn was) and evaluates only
the rest, when that prefix is worth it (REUSE_MIN_TOKENS or half the prompt); otherwise it takes the lowest free slot.

Why slots are packed: each sequence has its own KV stream (the context is not kv_unified), and llama.cpp then
splits a batch into micro-batches of *consecutive* sequence ids in increasing order (llama_batch_allocr::
split_equal with sequential=true), one graph evaluation each. Sequences 0-63 in order are one evaluation; the same
64 scattered over the slots, or listed out of order, are many, and the graph's shape changes from step to step so
CUDA graphs are never replayed. Measured on an H200 at 64 streams: decode-only steps of 12.7 ms instead of 1.5 ms
(docs/BENCHMARKS.md). So every llama_decode lists its sequences by id, a new request fills the lowest free slot
unless a long shared prefix is worth a hole, and a hole that no request fills (a stream that ended before the
others) is closed by moving the highest busy sequence's cache into it (Context.move, one copy of its stream).

Pipelining (`pipeline`, a second context over the same weights): on a GPU llama_decode only queues the work, and
the host then waits for the logits, samples every sequence and emits text while the GPU idles; at 64 streams on an
H200 that was half of each step (docs/BENCHMARKS.md). With two contexts ("lanes", each with half the slots) the
host samples one lane while the GPU evaluates the other: a step launches every lane that is not in flight, then
collects (samples, emits) the one launched first. A lane in flight is left alone until it is collected: no request
joins it, nothing of it is cancelled, moved or forgotten, since its batch is still being evaluated. With one lane a
step launches and collects it, as without pipelining. New requests fill the first lane before the second
(_choose_slot says why), so below half the slots nothing is split.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from offload.errors import ContextLengthExceeded, OffloadError
from offload.generation import Chunk, DoneReason, EmbedRequest, EmbedResult, GenerateRequest, to_wire
from offload.runner.llamacpp import BatchPart, Context, Model, Sampler, schema_grammar
from offload.runner.protocol import Message
from offload.runner.textstream import TextStream

log = logging.getLogger("offload.runner")

Emit = Callable[[Message], None]
_EMBED_CTX_MAX = 8192
# A free slot whose cache shares at least this many tokens (or half the prompt) with a new prompt is taken for
# reuse even when a lower slot is free. Below that, evaluating the shared tokens again costs less than a gap in the
# busy slots (see above): prompts that share only BOS and a few template tokens must not scatter over the slots.
REUSE_MIN_TOKENS = 32


@dataclass
class Sequence:
    id: str
    request: GenerateRequest
    tokens: list[int]  # prompt tokens; generated ones are appended as they are decoded
    n_prompt: int
    sampler: Sampler
    text: TextStream
    stop_tokens: frozenset[int]  # control tokens named as stop strings: they render as no text, so match by id
    slot: Slot | None = None
    n_cached: int = 0  # tokens of `tokens` already in the KV cache
    n_reused: int = 0  # prompt tokens found in the slot's cache when placed (not evaluated)
    n_generated: int = 0
    next_token: int | None = None  # sampled, not yet decoded
    started_ns: int = field(default_factory=time.perf_counter_ns)
    prompt_done_ns: int = 0

    @property
    def prefilling(self) -> bool:
        return self.n_cached < self.n_prompt


@dataclass
class BusyPeriod:
    """Where the loop's time went from the step that found work to the one that left none: logged as one line,
    the first thing to read when the engine is slower than llama.cpp's own tools."""

    started: float = 0.0
    steps: int = 0
    evaluated: int = 0  # tokens through llama_decode (prompt and generated)
    sampled: int = 0
    decode_s: float = 0.0
    sample_s: float = 0.0
    output_s: float = 0.0  # postprocess: detokenize, stop strings, emit
    # llama_decode calls holding only one token per sequence (steady decoding) apart from those with prompt chunks
    pure_calls: int = 0
    pure_s: float = 0.0

    def line(self, ended: float) -> str:
        wall = ended - self.started
        rest = wall - self.decode_s - self.sample_s - self.output_s
        pure = f"{self.pure_s / self.pure_calls * 1000:.2f} ms" if self.pure_calls else "-"
        return (
            f"busy {wall:.2f} s: {self.steps} steps, {self.evaluated} tokens evaluated, {self.sampled} sampled "
            f"({self.sampled / max(self.steps, 1):.1f} per step); llama_decode {self.decode_s:.2f} s "
            f"({self.pure_calls} calls of decode tokens only, {pure} each), sampling {self.sample_s:.2f} s, "
            f"output {self.output_s:.2f} s, between steps {rest:.2f} s"
        )


@dataclass(eq=False)
class Lane:
    """One llama.cpp context, its slots, and the llama_decode of it that was launched and not yet collected."""

    context: Context
    slots: list[Slot] = field(default_factory=list)
    launched: bool = False
    pending: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, output row) to sample
    sampled: list[tuple[Sequence, int]] = field(default_factory=list)  # sampled already (invariant mode's calls)


@dataclass(eq=False)
class Slot:
    """One of a lane's sequences (seq_id in its context) and what its part of the KV cache holds."""

    lane: Lane
    seq_id: int
    cached: list[int] = field(default_factory=list)
    seq: Sequence | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine:
    def __init__(
        self,
        model: Model,
        context: Context,
        emit: Emit,
        *,
        n_threads: int,
        invariant: bool = False,
        sampling_threads: int = 1,
        pipeline: Context | None = None,
    ) -> None:
        """`sampling_threads` > 1: sequences are sampled on that many threads (see _sample). `pipeline`: a second
        context of the same model and n_ctx_seq, evaluated while the first is sampled (module docstring)."""
        if pipeline is not None and pipeline.n_ctx_seq != context.n_ctx_seq:
            raise ValueError("a pipeline context must give each sequence the first context's n_ctx_seq")
        self.model = model
        self.context = context
        self.emit = emit
        self.n_threads = n_threads
        self.invariant = invariant
        self.busy = BusyPeriod()
        self._sampling_threads = max(1, sampling_threads)
        self._pool = (
            ThreadPoolExecutor(self._sampling_threads, thread_name_prefix="runner-sample")
            if self._sampling_threads > 1
            else None
        )
        self.waiting: deque[tuple[str, GenerateRequest]] = deque()
        self.lanes = [Lane(ctx) for ctx in (context, pipeline) if ctx is not None]
        for lane in self.lanes:
            lane.slots = [Slot(lane, seq_id) for seq_id in range(lane.context.n_seq_max)]
        self.slots = [slot for lane in self.lanes for slot in lane.slots]
        self._in_flight: deque[Lane] = deque()  # launched lanes, oldest first
        self._head: tuple[str, list[int]] | None = None  # the queue head's prompt tokens (_prompt_tokens)
        self.active: list[Sequence] = []  # in arrival order: prefill chunks are handed out in this order
        self.cancelled: set[str] = set()
        self._packing = True  # off once llama.cpp refuses a move (_pack)
        self._embedder: Context | None = None

    # ---- requests from the server -------------------------------------------------------------------------
    def submit(self, request_id: str, request: GenerateRequest) -> None:
        self.waiting.append((request_id, request))

    def cancel(self, request_id: str) -> None:
        if any(seq.id == request_id for seq in self.active):
            self.cancelled.add(request_id)  # dropped at the next step, during prefill too
            return
        for i, (waiting_id, _) in enumerate(self.waiting):
            if waiting_id == request_id:
                del self.waiting[i]
                self.emit({"op": "chunk", "id": request_id, "chunk": to_wire(Chunk(done=True, done_reason="cancel"))})
                return

    def has_work(self) -> bool:
        return bool(self.active) or bool(self.waiting) or bool(self._in_flight)

    # ---- the loop ------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Launch every lane with work that is not in flight, then collect the one launched first (with one lane:
        evaluate it and sample it)."""
        busy = self.busy
        if busy.steps == 0:
            busy.started = time.perf_counter()
        self.schedule()
        for lane in self.lanes:
            if not lane.launched and any(slot.seq is not None for slot in lane.slots):
                self._launch(lane)
        if self._in_flight:
            busy.steps += 1
            sampled = self._collect(self._in_flight.popleft())
            started = time.perf_counter()
            for seq, token in sampled:
                self.postprocess(seq, token)
            busy.output_s += time.perf_counter() - started
        if not self.has_work() and busy.steps:
            log.info("runner %s", busy.line(time.perf_counter()))
            self.busy = BusyPeriod()

    def schedule(self) -> list[Sequence]:
        """Drop cancelled sequences, admit waiting requests into free slots of lanes not in flight; the active
        sequences."""
        for seq in [s for s in self.active if s.id in self.cancelled and s.slot and not s.slot.lane.launched]:
            self.finish(seq, "cancel")
        while self.waiting and any(slot.seq is None for slot in self.slots):
            request_id, request = self.waiting[0]
            try:
                tokens = self._prompt_tokens(request_id, request)
                slot = self._choose_slot(tokens)
                if slot is None:
                    break  # its lane is in flight: half a step later
                seq = self._start(request_id, request, tokens)
            except OffloadError as exc:
                self.waiting.popleft()
                self.emit({"op": "error", "id": request_id, "code": exc.code, "message": exc.message})
                continue
            self.waiting.popleft()
            self._place(seq, slot)
            self.active.append(seq)
        for lane in self.lanes:
            if not lane.launched:
                self._pack(lane)
        return self.active

    def _pack(self, lane: Lane) -> None:
        """While the lane's busy slots have a gap, move the highest busy sequence into the lowest free slot below
        it, so the busy sequence ids stay consecutive (module docstring). A move llama.cpp refuses leaves things as
        they are (the batch is then split, which is slower but correct)."""
        while self._packing:
            busy = [slot for slot in lane.slots if slot.seq is not None]
            if not busy or busy[-1].seq_id - busy[0].seq_id + 1 == len(busy):
                return
            source = busy[-1]
            target = next(slot for slot in lane.slots[busy[0].seq_id :] if slot.seq is None)
            seq = source.seq
            assert seq is not None
            if not lane.context.move(source.seq_id, target.seq_id):
                log.warning("llama.cpp could not move sequence %d's cache to %d: batches with a gap in the slots "
                            "stay split from now on", source.seq_id, target.seq_id)
                self._packing = False
                return
            target.cached, target.seq, seq.slot = source.cached, seq, target
            source.cached, source.seq = [], None

    def _launch(self, lane: Lane) -> None:
        """Evaluate every sequence of `lane` that has work: one llama_decode, left in flight (on a GPU it returns
        before the evaluation ends); in invariant mode one for the decode tokens and one per prompt chunk, each
        sampled before the next call overwrites the logits, the last left in flight."""
        calls = self._calls(lane)
        for call in calls[:-1]:
            pending = self._decode(lane.context, call)
            started = time.perf_counter()
            lane.sampled += self._sample(lane.context, pending)
            self.busy.sample_s += time.perf_counter() - started
        lane.pending = self._decode(lane.context, calls[-1]) if calls else []
        lane.launched = True
        self._in_flight.append(lane)

    def _collect(self, lane: Lane) -> list[tuple[Sequence, int]]:
        """(sequence, sampled token) for each sequence of the lane's launched calls that got one."""
        started = time.perf_counter()
        pending = [(seq, row) for seq, row in lane.pending if seq.slot is not None]  # a finished one has no slot
        sampled = lane.sampled + self._sample(lane.context, pending)
        lane.pending, lane.sampled, lane.launched = [], [], False
        self.busy.sample_s += time.perf_counter() - started
        self.busy.sampled += len(sampled)
        return sampled

    def _calls(self, lane: Lane) -> list[list[tuple[Sequence, BatchPart]]]:
        """The batches to evaluate for the lane's sequences: the next token of every decoding one, then prompt
        chunks of those still prefilling, in arrival order, within n_batch; in invariant mode the decode tokens
        and each chunk apart (module docstring). Each lists its sequences by id."""
        ctx = lane.context
        budget = ctx.n_batch
        mine = [seq for seq in self.active if seq.slot is not None and seq.slot.lane is lane]
        decodes: list[tuple[Sequence, BatchPart]] = []
        for seq in mine:
            if seq.next_token is None:
                continue
            if seq.n_cached + 1 >= ctx.n_ctx_seq:
                self.finish(seq, "length")
                continue
            seq.tokens.append(seq.next_token)
            seq.next_token = None
            decodes.append((seq, BatchPart(seq.tokens[seq.n_cached :], seq.n_cached, self._seq_id(seq), output=True)))
            budget -= 1
        prefills: list[tuple[Sequence, BatchPart]] = []
        for seq in mine:  # a decoding sequence is past its prompt: only prefilling ones take chunks
            if not seq.prefilling:
                continue
            take = self._chunk_size(seq, budget)
            if take == 0:
                break
            chunk = seq.tokens[seq.n_cached : seq.n_cached + take]
            done = seq.n_cached + take >= seq.n_prompt
            prefills.append((seq, BatchPart(chunk, seq.n_cached, self._seq_id(seq), output=done)))
            budget -= take
        calls = [decodes, *([p] for p in prefills)] if self.invariant else [decodes + prefills]
        # By sequence id: llama.cpp evaluates a run of consecutive ids together (module docstring).
        return [sorted(call, key=lambda item: item[1].seq_id) for call in calls if call]

    def _chunk_size(self, seq: Sequence, budget: int) -> int:
        """Prompt tokens of `seq` to evaluate this step, within `budget` (0: none fit). Invariant mode never
        evaluates a lone prompt token, unless the prompt is a single token (it is then always evaluated so)."""
        left = seq.n_prompt - seq.n_cached
        take = min(budget, left)
        if self.invariant and left > 1:
            if left - take == 1:
                take -= 1
            if take < 2:
                return 0
        return max(take, 0)

    def _decode(self, ctx: Context, call: list[tuple[Sequence, BatchPart]]) -> list[tuple[Sequence, int]]:
        """One llama_decode; (sequence, output row) for each part with an output. A failed call fails its
        sequences."""
        started = time.perf_counter()
        try:
            rows = ctx.decode_parts([part for _, part in call])
        except OffloadError as exc:
            for seq, _ in call:
                self.fail(seq, exc)
            return []
        pending: list[tuple[Sequence, int]] = []
        for (seq, part), row in zip(call, rows, strict=True):
            seq.n_cached += len(part.tokens)
            if row is None:
                continue
            if not seq.prompt_done_ns:
                seq.prompt_done_ns = time.perf_counter_ns()
            pending.append((seq, row))
        busy = self.busy
        spent = time.perf_counter() - started
        busy.decode_s += spent
        if all(len(part.tokens) == 1 for _, part in call):
            busy.pure_calls += 1
            busy.pure_s += spent
        busy.evaluated += sum(len(part.tokens) for _, part in call)
        return pending

    def _sample(self, ctx: Context, pending: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
        """Each sequence's next token from its output row of `ctx`. A sampler chain reads the shared logits and
        changes only its own state, and the ctypes call releases the GIL, so groups of sequences sample on the
        pool's threads at once: at 64 streams on an H200 (a 32k vocabulary) sampling one after another was a third
        of the decode loop (docs/BENCHMARKS.md)."""
        if self._pool is None or len(pending) < 2:
            return [(seq, seq.sampler.sample(ctx, row)) for seq, row in pending]
        size = -(-len(pending) // min(self._sampling_threads, len(pending)))  # contiguous groups keep batch order
        groups = [pending[i : i + size] for i in range(0, len(pending), size)]

        def sample_group(group: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
            return [(seq, seq.sampler.sample(ctx, row)) for seq, row in group]

        return [pair for group in self._pool.map(sample_group, groups) for pair in group]

    def postprocess(self, seq: Sequence, token: int) -> None:
        if self.model.is_end(token) or token in seq.stop_tokens:
            self.finish(seq, "stop")
            return
        seq.n_generated += 1
        seq.next_token = token
        text = seq.text.feed(self.model.piece(token))
        if text:
            self.emit({"op": "chunk", "id": seq.id, "chunk": {"text": text}})
        if seq.text.stopped:
            self.finish(seq, "stop")
        elif seq.request.num_predict is not None and seq.n_generated >= seq.request.num_predict:
            self.finish(seq, "length")

    def finish(self, seq: Sequence, reason: DoneReason) -> None:
        now = time.perf_counter_ns()
        prompt_done = seq.prompt_done_ns or now
        rest = seq.text.finish() if reason != "stop" else ""
        context = None
        if seq.request.return_context:
            produced = seq.tokens + ([seq.next_token] if seq.next_token is not None else [])
            context = tuple(produced)
        final = Chunk(
            text=rest,
            done=True,
            done_reason=reason,
            prompt_eval_count=seq.n_prompt,
            prompt_cached_count=seq.n_reused,
            prompt_eval_duration=prompt_done - seq.started_ns,
            eval_count=seq.n_generated,
            eval_duration=now - prompt_done,
            context=context,
        )
        self.emit({"op": "chunk", "id": seq.id, "chunk": to_wire(final)})
        self._release(seq, keep_cache=True)

    def fail(self, seq: Sequence, exc: OffloadError) -> None:
        self.emit({"op": "error", "id": seq.id, "code": exc.code, "message": exc.message})
        # The slot's cache may hold a half-written batch: forget it rather than trust it.
        self._release(seq, keep_cache=False)

    def _release(self, seq: Sequence, *, keep_cache: bool) -> None:
        seq.sampler.close()
        self.cancelled.discard(seq.id)
        if seq in self.active:
            self.active.remove(seq)
        slot = seq.slot
        if slot is not None:
            if keep_cache:
                slot.cached = seq.tokens[: seq.n_cached]
            else:
                slot.lane.context.forget(slot.seq_id, 0)
                slot.cached = []
            slot.seq = None
            seq.slot = None

    def _seq_id(self, seq: Sequence) -> int:
        assert seq.slot is not None  # every active sequence holds a slot
        return seq.slot.seq_id

    def _prompt_tokens(self, request_id: str, request: GenerateRequest) -> list[int]:
        """The request's prompt tokens (remembered for the request at the head of the queue, which may wait for a
        slot over many steps); ContextLengthExceeded when they do not fit one sequence."""
        if self._head is not None and self._head[0] == request_id:
            return self._head[1]
        tokens = list(request.context) + self.model.tokenize(request.prompt, add_special=not request.context)
        n_ctx_seq = self.context.n_ctx_seq
        if not tokens:
            raise ContextLengthExceeded("the prompt is empty after tokenization")
        if len(tokens) >= n_ctx_seq:
            raise ContextLengthExceeded(
                f"the prompt has {len(tokens)} tokens but the context holds {n_ctx_seq} per request; "
                "shorten it or raise num_ctx", param="messages"
            )
        self._head = (request_id, tokens)
        return tokens

    def _start(self, request_id: str, request: GenerateRequest, tokens: list[int] | None = None) -> Sequence:
        if tokens is None:
            tokens = self._prompt_tokens(request_id, request)
        self._head = None
        seed = request.sampling.seed if request.sampling.seed is not None else random.getrandbits(32)
        grammar = schema_grammar(request.json_schema) if request.json_schema else None
        sampler = Sampler(request.sampling, self.model.facts.n_vocab, seed, grammar=grammar, vocab=self.model.vocab)
        stop_tokens = frozenset(t for t in map(self.model.control_token, request.stop) if t is not None)
        return Sequence(request_id, request, tokens, len(tokens), sampler, TextStream(request.stop), stop_tokens)

    def _choose_slot(self, tokens: list[int]) -> Slot | None:
        """The free slot for a prompt (at least one is free): the one whose cache shares the longest prefix with it
        if that prefix is worth a gap in the busy slots (module docstring), else the lowest free slot of the first
        lane that has one: the second lane fills only once the first is full (below). None when that slot's lane is
        in flight: it can take the prompt once collected.

        Why fill the first lane first: each lane's evaluation reads all the weights. Where a step's GPU time is set
        by the weights (a large model, few rows), two half batches cost the GPU nearly twice one full batch, more
        than the host time the overlap hides: an 8B model at 16 streams split 8 + 8 decoded at 0.79x llama-server
        (docs/BENCHMARKS.md). With the first lane full there are as many rows as the lane holds, where the split
        pays at any model size measured."""
        free = [slot for slot in self.slots if slot.seq is None]
        shared, slot = max(((common_prefix(s.cached, tokens), s) for s in free), key=lambda c: c[0])
        if shared < REUSE_MIN_TOKENS and 2 * shared < len(tokens):
            slot = free[0]  # self.slots lists the first lane's slots first, each lane's by id
        return None if slot.lane.launched else slot

    def _place(self, seq: Sequence, slot: Slot) -> None:
        """Put `seq` in `slot`, keeping the prefix its cache shares with the prompt."""
        # The last prompt token is evaluated again: it gives the logits (in invariant mode the last two, see above).
        common = max(0, min(common_prefix(slot.cached, seq.tokens), len(seq.tokens) - (2 if self.invariant else 1)))
        ctx = slot.lane.context
        if common == 0 or not ctx.forget(slot.seq_id, common):
            ctx.forget(slot.seq_id, 0)
            common = 0
        slot.cached = seq.tokens[:common]
        slot.seq = seq
        seq.slot = slot
        seq.n_cached = seq.n_reused = common

    # ---- one-shot requests ---------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        embedder = self._embedding_context()
        n_ctx = embedder.n_ctx_seq
        vectors: list[tuple[float, ...]] = []
        total = 0
        for text in request.inputs:
            tokens = self.model.tokenize(text)
            if len(tokens) > n_ctx:
                if not request.truncate:
                    raise ContextLengthExceeded(
                        f"input has {len(tokens)} tokens but the embedding context holds {n_ctx}", param="input"
                    )
                tokens = tokens[:n_ctx]
            embedder.clear()
            embedder.decode(tokens, 0, all_outputs=True)
            vector = embedder.sequence_embedding(0, self.model.facts.n_embd)
            vectors.append(tuple(vector))  # raw: each API dialect decides whether to normalize
            total += len(tokens)
        return EmbedResult(embeddings=tuple(vectors), prompt_eval_count=total)

    def _embedding_context(self) -> Context:
        if self._embedder is None:
            n_ctx = min(self.context.n_ctx_seq, _EMBED_CTX_MAX)  # one request's context, as for generation
            # The whole input must fit in one micro-batch for pooling, hence n_batch = n_ctx.
            def make(pooling: int) -> Context:
                return Context(
                    self.model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=self.n_threads, embeddings=True, pooling=pooling
                )

            embedder = make(-1)  # the model's own pooling, if it has one
            if embedder.pooling == 0:  # a generative model: ask for mean pooling explicitly
                embedder.close()
                embedder = make(1)
            self._embedder = embedder
        return self._embedder

    def stop_sampling_threads(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        self.stop_sampling_threads()
        if self._embedder is not None:
            self._embedder.close()
        for lane in self.lanes:
            lane.context.close()
        self.model.close()
