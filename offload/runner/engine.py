"""The runner's decode loop: free of sockets and asyncio, it only turns requests into emitted messages.

Continuous batching: the context has `n_seq_max` sequence slots. One step =
`schedule()` admits waiting requests into free slots and drops cancelled ones, `run()` builds one llama.cpp batch
(the next token of every decoding sequence first, then prompt chunks of the sequences still prefilling, in
arrival order, up to n_batch tokens) and calls llama_decode once, `postprocess()` samples each sequence's token
from its own output row and turns it into chunks. So a request joins at the next step, a finished one leaves, and
a long prompt delays the other streams by at most one chunk per step. A request's limit is the context's
n_ctx_seq, the cells of its slot.

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


@dataclass
class Slot:
    """One of the context's sequences (seq_id) and what its part of the KV cache holds."""

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
    ) -> None:
        """`sampling_threads` > 1: sequences are sampled on that many threads (see _sample)."""
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
        self.slots = [Slot(seq_id) for seq_id in range(context.n_seq_max)]
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
        return bool(self.active) or bool(self.waiting)

    # ---- the loop ------------------------------------------------------------------------------------------
    def step(self) -> None:
        busy = self.busy
        if busy.steps == 0:
            busy.started = time.perf_counter()
        active = self.schedule()
        if active:
            busy.steps += 1
            parts = self.run(active)
            started = time.perf_counter()
            for seq, token in parts:
                self.postprocess(seq, token)
            busy.output_s += time.perf_counter() - started
        if not self.has_work() and busy.steps:
            log.info("runner %s", busy.line(time.perf_counter()))
            self.busy = BusyPeriod()

    def schedule(self) -> list[Sequence]:
        """Drop cancelled sequences, admit waiting requests into free slots; the sequences to step."""
        for seq in [s for s in self.active if s.id in self.cancelled]:
            self.finish(seq, "cancel")
        while self.waiting:
            free = [slot for slot in self.slots if slot.seq is None]
            if not free:
                break
            request_id, request = self.waiting.popleft()
            try:
                seq = self._start(request_id, request)
            except OffloadError as exc:
                self.emit({"op": "error", "id": request_id, "code": exc.code, "message": exc.message})
                continue
            self._place(seq, free)
            self.active.append(seq)
        self._pack()
        return self.active

    def _pack(self) -> None:
        """While the busy slots have a gap, move the highest busy sequence into the lowest free slot below it, so
        the busy sequence ids stay consecutive (module docstring). A move llama.cpp refuses leaves things as they
        are (the batch is then split, which is slower but correct)."""
        while self._packing:
            busy = [slot for slot in self.slots if slot.seq is not None]
            if not busy or busy[-1].seq_id - busy[0].seq_id + 1 == len(busy):
                return
            source = busy[-1]
            target = next(slot for slot in self.slots[busy[0].seq_id :] if slot.seq is None)
            seq = source.seq
            assert seq is not None
            if not self.context.move(source.seq_id, target.seq_id):
                log.warning("llama.cpp could not move sequence %d's cache to %d: batches with a gap in the slots "
                            "stay split from now on", source.seq_id, target.seq_id)
                self._packing = False
                return
            target.cached, target.seq, seq.slot = source.cached, seq, target
            source.cached, source.seq = [], None

    def run(self, active: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Evaluate every sequence that has work (one llama_decode, or in invariant mode one for the decode tokens
        and one per prompt chunk); (sequence, sampled token) for each that got one."""
        ctx = self.context
        budget = ctx.n_batch
        decodes: list[tuple[Sequence, BatchPart]] = []
        for seq in list(active):
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
        for seq in active:  # a decoding sequence is past its prompt: only prefilling ones take chunks
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
        sampled: list[tuple[Sequence, int]] = []
        for call in calls:
            if call:
                # By sequence id: llama.cpp evaluates a run of consecutive ids together (module docstring).
                sampled += self._evaluate(sorted(call, key=lambda item: item[1].seq_id))
        return sampled

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

    def _evaluate(self, call: list[tuple[Sequence, BatchPart]]) -> list[tuple[Sequence, int]]:
        ctx = self.context
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
        decoded = time.perf_counter()
        sampled = self._sample(pending)
        busy = self.busy
        busy.decode_s += decoded - started
        if all(len(part.tokens) == 1 for _, part in call):
            busy.pure_calls += 1
            busy.pure_s += decoded - started
        busy.sample_s += time.perf_counter() - decoded
        busy.evaluated += sum(len(part.tokens) for _, part in call)
        busy.sampled += len(sampled)
        return sampled

    def _sample(self, pending: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
        """Each sequence's next token from its output row. A sampler chain reads the shared logits and changes
        only its own state, and the ctypes call releases the GIL, so groups of sequences sample on the pool's
        threads at once: over a 128k-262k vocabulary this was a third of the decode loop at 64 streams on an H200
        (docs/BENCHMARKS.md)."""
        ctx = self.context
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
                self.context.forget(slot.seq_id, 0)
                slot.cached = []
            slot.seq = None
            seq.slot = None

    def _seq_id(self, seq: Sequence) -> int:
        assert seq.slot is not None  # every active sequence holds a slot
        return seq.slot.seq_id

    def _start(self, request_id: str, request: GenerateRequest) -> Sequence:
        tokens = list(request.context) + self.model.tokenize(request.prompt, add_special=not request.context)
        n_ctx_seq = self.context.n_ctx_seq
        if not tokens:
            raise ContextLengthExceeded("the prompt is empty after tokenization")
        if len(tokens) >= n_ctx_seq:
            raise ContextLengthExceeded(
                f"the prompt has {len(tokens)} tokens but the context holds {n_ctx_seq} per request; "
                "shorten it or raise num_ctx", param="messages"
            )
        seed = request.sampling.seed if request.sampling.seed is not None else random.getrandbits(32)
        grammar = schema_grammar(request.json_schema) if request.json_schema else None
        sampler = Sampler(request.sampling, self.model.facts.n_vocab, seed, grammar=grammar, vocab=self.model.vocab)
        stop_tokens = frozenset(t for t in map(self.model.control_token, request.stop) if t is not None)
        return Sequence(request_id, request, tokens, len(tokens), sampler, TextStream(request.stop), stop_tokens)

    def _place(self, seq: Sequence, free: list[Slot]) -> None:
        """Put `seq` in the free slot whose cache shares the longest prefix with its prompt if that prefix is worth a
        gap in the busy slots, else in the lowest free slot (module docstring); keep the prefix it shares."""
        shared, slot = max(((common_prefix(s.cached, seq.tokens), s) for s in free), key=lambda c: (c[0], -c[1].seq_id))
        lowest = min(free, key=lambda s: s.seq_id)
        if shared < REUSE_MIN_TOKENS and 2 * shared < len(seq.tokens) and slot is not lowest:
            shared, slot = common_prefix(lowest.cached, seq.tokens), lowest
        # The last prompt token is evaluated again: it gives the logits (in invariant mode the last two, see above).
        common = max(0, min(shared, len(seq.tokens) - (2 if self.invariant else 1)))
        if common == 0 or not self.context.forget(slot.seq_id, common):
            self.context.forget(slot.seq_id, 0)
            common = 0
        slot.cached = seq.tokens[:common]
        slot.seq = seq
        seq.slot = slot
        seq.n_cached = common

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
        self.context.close()
        self.model.close()
