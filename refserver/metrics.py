"""Prometheus metrics: llama-server's names, refserver's extras, and vLLM's names for routers.

- `llamacpp:` - the metrics llama-server emits with `--metrics`, same names, HELP texts and
  values, so a llama.cpp dashboard works unchanged.  Two differ in type only: llama-server
  declares `n_tokens_max` and `n_busy_slots_per_decode` counters, but they are a maximum and a
  ratio; a Prometheus counter's sample must end in `_total`, so they are gauges here.  Its
  throughput gauges average over the window since the previous scrape, as llama-server's do.
- `refserver:` - what llama-server has no name for (model calls, prompt-cache size, KV use,
  request latency histogram).
- `vllm:` (`--metrics-compat vllm`) - the gauges and counters that the Gateway API Inference
  Extension / llm-d endpoint picker and other routers read by default: queue, running
  requests, KV-cache usage in 0..1, prefix-cache queries and hits, cache config.

Engine values are read from `engine.stats()` at scrape time; the request latency histogram
is observed by the HTTP layer as each request finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COMPAT_CHOICES = ("vllm",)
# refserver keeps KV per token; vLLM reports it in blocks.  It is reported in blocks of
# vLLM's default size, so block_size * num_gpu_blocks is the token capacity.
VLLM_BLOCK_SIZE = 16

# (stats key, name, help): llama-server's counters and their HELP texts
_LLAMACPP_COUNTERS = [
    ("prompt_tokens_total", "llamacpp:prompt_tokens_total", "Number of prompt tokens processed."),
    ("prompt_tokens_seconds", "llamacpp:prompt_seconds_total", "Prompt process time"),
    ("tokens_predicted_total", "llamacpp:tokens_predicted_total", "Number of generation tokens processed."),
    ("tokens_predicted_seconds", "llamacpp:tokens_predicted_seconds_total", "Predict process time"),
    ("n_decode_total", "llamacpp:n_decode_total", "Total number of llama_decode() calls"),
    ("prompt_tokens_cache_total", "llamacpp:prompt_tokens_cached_total",
     "Number of prompt tokens reused from the cache"),
]
_LLAMACPP_GAUGES = [
    ("requests_processing", "llamacpp:requests_processing", "Number of requests processing."),
    ("requests_deferred", "llamacpp:requests_deferred", "Number of requests deferred."),
    ("n_tokens_max", "llamacpp:n_tokens_max", "Largest observed n_tokens."),
]
_REFSERVER_COUNTERS = [
    ("n_model_calls", "refserver:n_model_calls", "Model invocations (ONNX Runtime run calls)."),
    ("n_steps", "refserver:n_steps", "Engine scheduler steps."),
]
_REFSERVER_GAUGES = [
    ("n_busy_slots", "refserver:n_busy_slots", "Number of busy slots."),
    ("prompt_cache_entries", "refserver:prompt_cache_entries", "Entries in the cross-slot prompt cache."),
    ("prompt_cache_bytes", "refserver:prompt_cache_bytes", "Bytes of KV held by the cross-slot prompt cache."),
    ("kv_cache_tokens", "refserver:kv_cache_tokens", "KV-cache tokens held by running requests."),
]


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if tokens and seconds > 0 else 0.0


class _EngineCollector:
    """Turns one `engine.stats()` snapshot into metric families at each scrape."""

    def __init__(self, stats: Callable[[], dict | None], model_name: str, compat: tuple[str, ...]):
        self._stats = stats
        self._model_name = model_name
        self._compat = compat
        self._window = (0.0, 0.0, 0.0, 0.0)  # totals at the previous scrape, for the throughput gauges

    def collect(self) -> Iterator[Metric]:
        stats = self._stats() or {}
        if not stats:
            return
        yield from self._llamacpp(stats)
        yield from self._refserver(stats)
        if "vllm" in self._compat:
            yield from self._vllm(stats)

    def _llamacpp(self, stats: dict) -> Iterator[Metric]:
        for key, name, help_text in _LLAMACPP_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=float(stats[key]))
        totals = (stats["prompt_tokens_total"], stats["prompt_tokens_seconds"],
                  stats["tokens_predicted_total"], stats["tokens_predicted_seconds"])
        delta = [now - before for now, before in zip(totals, self._window)]
        self._window = totals
        yield GaugeMetricFamily("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                                value=_rate(delta[0], delta[1]))
        yield GaugeMetricFamily("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                                value=_rate(delta[2], delta[3]))
        for key, name, help_text in _LLAMACPP_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(stats[key]))
        yield GaugeMetricFamily("llamacpp:n_busy_slots_per_decode",
                                "Average number of busy slots per llama_decode() call",
                                value=stats["n_busy_slots_total"] / max(stats["n_decode_total"], 1))

    def _refserver(self, stats: dict) -> Iterator[Metric]:
        for key, name, help_text in _REFSERVER_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=float(stats[key]))
        for key, name, help_text in _REFSERVER_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(stats[key]))
        yield GaugeMetricFamily("refserver:kv_cache_usage_ratio",
                                "KV-cache usage of running requests. 1 means 100 percent usage.",
                                value=self._kv_usage(stats))

    def _vllm(self, stats: dict) -> Iterator[Metric]:
        label = ["model_name"]

        def family(cls, name: str, help_text: str, value: float) -> Metric:
            metric = cls(name, help_text, labels=label)
            metric.add_metric([self._model_name], float(value))
            return metric

        yield family(GaugeMetricFamily, "vllm:num_requests_running",
                     "Number of requests in model execution batches.", stats["requests_processing"])
        yield family(GaugeMetricFamily, "vllm:num_requests_waiting",
                     "Number of requests waiting to be processed.", stats["requests_deferred"])
        yield family(GaugeMetricFamily, "vllm:kv_cache_usage_perc",
                     "KV-cache usage. 1 means 100 percent usage.", self._kv_usage(stats))
        yield family(CounterMetricFamily, "vllm:prefix_cache_queries",
                     "Prefix cache queries, in terms of number of queried tokens.",
                     stats["prompt_tokens_queried_total"])
        yield family(CounterMetricFamily, "vllm:prefix_cache_hits",
                     "Prefix cache hits, in terms of number of cached tokens.", stats["prompt_tokens_cache_total"])
        yield family(CounterMetricFamily, "vllm:prompt_tokens",
                     "Number of prefill tokens processed.", stats["prompt_tokens_queried_total"])
        yield family(CounterMetricFamily, "vllm:generation_tokens",
                     "Number of generation tokens processed.", stats["tokens_predicted_total"])
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks", "enable_prefix_caching"])
        info.add_metric([str(VLLM_BLOCK_SIZE), str(stats["kv_cache_capacity"] // VLLM_BLOCK_SIZE), "True"], 1.0)
        yield info
        # no LoRA adapters: the picker's LoRA affinity sees none loaded and none waiting
        lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        lora.add_metric(["0", "", ""], time.time())
        yield lora

    @staticmethod
    def _kv_usage(stats: dict) -> float:
        capacity = stats["kv_cache_capacity"]
        return min(1.0, stats["kv_cache_tokens"] / capacity) if capacity else 0.0


class Metrics:
    def __init__(self, stats: Callable[[], dict | None], model_name: str = "",
                 compat: tuple[str, ...] | list[str] = ()):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(stats, model_name, tuple(compat)))
        self.request_seconds = Histogram(
            "refserver:request_duration_seconds", "HTTP request latency by route and status.",
            ["route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route=route, status=str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
