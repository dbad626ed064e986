"""Prometheus metrics for /metrics, one registry per app so several apps (tests) never share counters.

Counters and histograms are updated as requests pass; what the scheduler holds (loaded models, their memory per
device) is read from `running()` at each scrape, so it is never stale. "Waiting" counts generations that have
not produced their first chunk yet: queued behind busy slots, loading the model, or evaluating the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from offload.generation import Chunk

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a warm small model on a GPU (~10 ms) to a cold load of a large one on a CPU (minutes).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Listing endpoints answer in milliseconds; generations without streaming take as long as the answer.
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RunningLike(Protocol):
    """What the scrape reads of a loaded model (`deps.RunningModelLike` has these and more)."""

    @property
    def name(self) -> str: ...
    @property
    def placement(self) -> dict[str, Any]: ...


def device_bytes(placement: Mapping[str, Any]) -> dict[str, int]:
    """Buffer bytes per device from a placement report (`devices: [{name, buffers: {kind: bytes}}]`); entries
    that are not shaped so are skipped, a scrape must not fail on one odd report."""
    out: dict[str, int] = {}
    devices = placement.get("devices")
    for device in devices if isinstance(devices, list) else []:
        if not isinstance(device, Mapping) or not isinstance(device.get("buffers"), Mapping):
            continue
        total = sum(value for value in device["buffers"].values() if isinstance(value, int))
        name = str(device.get("name", "?"))
        out[name] = out.get(name, 0) + total
    return out


class _LoadedCollector(Collector):
    """Loaded models and their memory, from the scheduler at scrape time."""

    def __init__(self, running: Callable[[], Sequence[RunningLike]]) -> None:
        self._running = running

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("offload_loaded_models", "Models loaded in runners now."),
            GaugeMetricFamily(
                "offload_model_memory_bytes",
                "Buffer bytes a loaded model holds per device (weights, KV cache, compute), from its load report.",
                labels=["model", "device"],
            ),
            GaugeMetricFamily(
                "offload_device_memory_bytes",
                "Buffer bytes all loaded models hold per device together.",
                labels=["device"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        loaded, per_model, per_device = self._families()
        models = list(self._running())
        loaded.add_metric([], len(models))
        totals: dict[str, int] = {}
        for model in models:
            for device, used in sorted(device_bytes(model.placement).items()):
                per_model.add_metric([model.name, device], used)
                totals[device] = totals.get(device, 0) + used
        for device, used in sorted(totals.items()):
            per_device.add_metric([device], used)
        yield from (loaded, per_model, per_device)


class Metrics:
    def __init__(self, running: Callable[[], Sequence[RunningLike]] = list) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "offload_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "offload_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (a stream's last byte), by route.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "offload_http_requests_in_progress", "HTTP requests being answered now.", registry=self.registry
        )
        self.prompt_tokens = Counter(
            "offload_prompt_tokens", "Prompt tokens of answered requests, cached ones included.", ["model"],
            registry=self.registry,
        )
        self.cached_tokens = Counter(
            "offload_prompt_cached_tokens",
            "Prompt tokens taken from the KV cache of an earlier request (prefix reuse), so not evaluated.",
            ["model"],
            registry=self.registry,
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
        self.waiting = Gauge(
            "offload_requests_waiting",
            "Generations without their first chunk yet (queued, loading the model, or evaluating the prompt).",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(_LoadedCollector(running))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.duration.labels(route=route).observe(seconds)

    def observe_first_chunk(self, model: str, seconds: float) -> None:
        self.ttft.labels(model=model).observe(seconds)

    def observe_final(self, model: str, chunk: Chunk) -> None:
        self.prompt_tokens.labels(model=model).inc(chunk.prompt_eval_count)
        self.cached_tokens.labels(model=model).inc(chunk.prompt_cached_count)
        self.generated_tokens.labels(model=model).inc(chunk.eval_count)

    def observe_embedding(self, model: str, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(model=model).inc(prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
