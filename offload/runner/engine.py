"""The runner's decode loop: free of sockets and asyncio, it only turns requests into emitted messages.

One step = `schedule()` picks the work, `run()` calls llama.cpp, `postprocess()` turns tokens into chunks.
This version serves one sequence at a time (the others wait in order); the batching engine replaces `schedule`
and `run` with multi-sequence versions without changing the seams. A request's limit is the context's n_ctx_seq, the
cells llama.cpp gives one sequence, not n_ctx, which is every sequence's together.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.errors import ContextLengthExceeded, OffloadError
from offload.generation import Chunk, DoneReason, EmbedRequest, EmbedResult, GenerateRequest, to_wire
from offload.runner.llamacpp import Context, Model, Sampler
from offload.runner.protocol import Message
from offload.runner.textstream import TextStream

log = logging.getLogger("offload.runner")

Emit = Callable[[Message], None]
_EMBED_CTX_MAX = 8192


@dataclass
class Sequence:
    id: str
    request: GenerateRequest
    tokens: list[int]  # prompt tokens; generated ones are appended as they are decoded
    n_prompt: int
    sampler: Sampler
    text: TextStream
    stop_tokens: frozenset[int]  # control tokens named as stop strings: they render as no text, so match by id
    n_cached: int = 0  # tokens of `tokens` already in the KV cache
    n_generated: int = 0
    next_token: int | None = None  # sampled, not yet decoded
    started_ns: int = field(default_factory=time.perf_counter_ns)
    prompt_done_ns: int = 0


class Engine:
    def __init__(self, model: Model, context: Context, emit: Emit, *, n_threads: int) -> None:
        self.model = model
        self.context = context
        self.emit = emit
        self.n_threads = n_threads
        self.waiting: deque[tuple[str, GenerateRequest]] = deque()
        self.active: Sequence | None = None
        self.cancelled: set[str] = set()
        self._kv_tokens: list[int] = []  # what sequence 0 of the cache holds, for prefix reuse
        self._embedder: Context | None = None

    # ---- requests from the server -------------------------------------------------------------------------
    def submit(self, request_id: str, request: GenerateRequest) -> None:
        self.waiting.append((request_id, request))

    def cancel(self, request_id: str) -> None:
        if self.active is not None and self.active.id == request_id:
            self.cancelled.add(request_id)
            return
        for i, (waiting_id, _) in enumerate(self.waiting):
            if waiting_id == request_id:
                del self.waiting[i]
                self.emit({"op": "chunk", "id": request_id, "chunk": to_wire(Chunk(done=True, done_reason="cancel"))})
                return

    def has_work(self) -> bool:
        return self.active is not None or bool(self.waiting)

    # ---- the loop ------------------------------------------------------------------------------------------
    def step(self) -> None:
        seq = self.schedule()
        if seq is None:
            return
        try:
            if seq.id in self.cancelled:
                self.finish(seq, "cancel")
                return
            token = self.run(seq)
            if token is not None:
                self.postprocess(seq, token)
        except OffloadError as exc:
            self.fail(seq, exc)

    def schedule(self) -> Sequence | None:
        while self.active is None and self.waiting:
            request_id, request = self.waiting.popleft()
            try:
                self.active = self._start(request_id, request)
            except OffloadError as exc:
                self.emit({"op": "error", "id": request_id, "code": exc.code, "message": exc.message})
        return self.active

    def run(self, seq: Sequence) -> int | None:
        """Prefill one chunk of the prompt, or decode the last sampled token; returns a new token when one is due."""
        ctx = self.context
        if seq.next_token is not None:
            if seq.n_cached + 1 >= ctx.n_ctx_seq:
                self.finish(seq, "length")
                return None
            seq.tokens.append(seq.next_token)
            seq.next_token = None
            ctx.decode(seq.tokens[seq.n_cached :], seq.n_cached)
            seq.n_cached = len(seq.tokens)
            self._kv_tokens = seq.tokens
            return seq.sampler.sample(ctx)
        chunk = seq.tokens[seq.n_cached : seq.n_cached + ctx.n_batch]
        ctx.decode(chunk, seq.n_cached)
        seq.n_cached += len(chunk)
        self._kv_tokens = seq.tokens[: seq.n_cached]
        if seq.n_cached < seq.n_prompt:
            return None
        seq.prompt_done_ns = time.perf_counter_ns()
        return seq.sampler.sample(ctx)

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
        self._release(seq)

    def fail(self, seq: Sequence, exc: OffloadError) -> None:
        self.emit({"op": "error", "id": seq.id, "code": exc.code, "message": exc.message})
        # The cache may hold a half-written batch: forget it rather than trust it.
        self.context.clear()
        self._kv_tokens = []
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        seq.sampler.close()
        self.cancelled.discard(seq.id)
        self.active = None

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
        sampler = Sampler(request.sampling, self.model.facts.n_vocab, seed)
        stop_tokens = frozenset(t for t in map(self.model.control_token, request.stop) if t is not None)
        seq = Sequence(request_id, request, tokens, len(tokens), sampler, TextStream(request.stop), stop_tokens)
        seq.n_cached = self._reuse_prefix(tokens)
        return seq

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the cached prefix this prompt shares with the last sequence (a chat's next turn)."""
        common = 0
        for cached, new in zip(self._kv_tokens, tokens, strict=False):
            if cached != new:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # the last prompt token must be evaluated to get logits
        if common == 0 or not self.context.forget(0, common):
            self.context.clear()
            common = 0
        self._kv_tokens = tokens[:common]
        return common

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

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        self.context.close()
        self.model.close()
