"""Prometheus metrics for /metrics, one registry per app so several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from offload.generation import Chunk

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a warm small model on a GPU (~10 ms) to a cold load of a large one on a CPU (minutes).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "offload_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "offload_prompt_tokens", "Prompt tokens evaluated.", ["model"], registry=self.registry
        )
        self.generated_tokens = Counter(
            "offload_generated_tokens", "Tokens generated.", ["model"], registry=self.registry
        )
        self.ttft = Histogram(
            "offload_time_to_first_token_seconds",
            "Seconds from the request reaching the API to the first generated chunk (includes model load).",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()

    def observe_first_chunk(self, model: str, seconds: float) -> None:
        self.ttft.labels(model=model).observe(seconds)

    def observe_final(self, model: str, chunk: Chunk) -> None:
        self.prompt_tokens.labels(model=model).inc(chunk.prompt_eval_count)
        self.generated_tokens.labels(model=model).inc(chunk.eval_count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
