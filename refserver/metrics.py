"""Prometheus metrics on a registry of refserver's own (llama.cpp's names, prefix `refserver:`).

Engine counters are read from `engine.stats()` at scrape time; the request latency
histogram is observed by the HTTP layer as each request finishes.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (stats key, metric name without the `_total` suffix, help)
_COUNTERS = [
    ("prompt_tokens_total", "refserver:prompt_tokens", "Number of prompt tokens processed."),
    ("prompt_tokens_seconds", "refserver:prompt_seconds", "Prompt process time."),
    ("tokens_predicted_total", "refserver:tokens_predicted", "Number of generation tokens processed."),
    ("tokens_predicted_seconds", "refserver:tokens_predicted_seconds", "Predict process time."),
    ("n_decode_total", "refserver:n_decode", "Total number of llama_decode() calls (engine steps)."),
    ("prompt_tokens_cache_total", "refserver:prompt_tokens_cache", "Prompt tokens reused from a cache."),
    ("n_model_calls", "refserver:n_model_calls", "Model invocations (ONNX Runtime run calls)."),
    ("n_steps", "refserver:n_steps", "Engine scheduler steps."),
]
_GAUGES = [
    ("requests_processing", "refserver:requests_processing", "Number of requests processing."),
    ("requests_deferred", "refserver:requests_deferred", "Number of requests deferred."),
    ("n_busy_slots", "refserver:n_busy_slots", "Number of busy slots."),
    ("prompt_cache_entries", "refserver:prompt_cache_entries", "Entries in the cross-slot prompt cache."),
    ("prompt_cache_bytes", "refserver:prompt_cache_bytes", "Bytes of KV held by the cross-slot prompt cache."),
]


class _EngineCollector:
    def __init__(self, stats: Callable[[], dict | None]):
        self._stats = stats

    def collect(self):
        stats = self._stats() or {}
        for key, name, help_text in _COUNTERS:
            if key in stats:
                yield CounterMetricFamily(name, help_text, value=float(stats[key]))
        for key, name, help_text in _GAUGES:
            if key in stats:
                yield GaugeMetricFamily(name, help_text, value=float(stats[key]))
        # Average throughputs, as llama.cpp's prompt_tokens_seconds / predicted_tokens_seconds gauges.
        for tokens, seconds, name in (("prompt_tokens_total", "prompt_tokens_seconds",
                                       "refserver:prompt_tokens_per_second"),
                                      ("tokens_predicted_total", "tokens_predicted_seconds",
                                       "refserver:predicted_tokens_per_second")):
            if tokens in stats and seconds in stats:
                rate = stats[tokens] / stats[seconds] if stats[seconds] > 0 else 0.0
                yield GaugeMetricFamily(name, "Average throughput in tokens/s.", value=rate)


class Metrics:
    def __init__(self, stats: Callable[[], dict | None]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(stats))
        self.request_seconds = Histogram(
            "refserver:request_duration_seconds", "HTTP request latency by route and status.",
            ["route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route=route, status=str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
