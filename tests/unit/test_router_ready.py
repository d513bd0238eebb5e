"""What a router or gateway in front of several servers reads: /metrics under llama.cpp's
names (and vLLM's with `--metrics-compat vllm`) with true values under load, and /health
that turns 503 while the server drains after SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from utils import ServerPreset, error_of, wait_until

pytestmark = pytest.mark.profile("refserver")

metrics = pytest.mark.feature("metrics")
limits = pytest.mark.feature("limits")

# llama-server's /metrics (tools/server): name -> (type, HELP)
LLAMACPP = {
    "llamacpp:prompt_tokens_total": ("counter", "Number of prompt tokens processed."),
    "llamacpp:prompt_seconds_total": ("counter", "Prompt process time"),
    "llamacpp:tokens_predicted_total": ("counter", "Number of generation tokens processed."),
    "llamacpp:tokens_predicted_seconds_total": ("counter", "Predict process time"),
    "llamacpp:n_decode_total": ("counter", "Total number of llama_decode() calls"),
    "llamacpp:n_tokens_max": ("gauge", "Largest observed n_tokens."),
    "llamacpp:n_busy_slots_per_decode": ("gauge", "Average number of busy slots per llama_decode() call"),
    "llamacpp:prompt_tokens_seconds": ("gauge", "Average prompt throughput in tokens/s."),
    "llamacpp:predicted_tokens_seconds": ("gauge", "Average generation throughput in tokens/s."),
    "llamacpp:requests_processing": ("gauge", "Number of requests processing."),
    "llamacpp:requests_deferred": ("gauge", "Number of requests deferred."),
}
VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
               "vllm:cache_config_info", "vllm:lora_requests_info")
VLLM_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def _declared(text: str) -> dict[str, tuple[str, str]]:
    """{metric name: (TYPE, HELP)} from the exposition's comment lines."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.MULTILINE))
    return {name: (kind, helps.get(name, "")) for name, kind in types.items()}


def _labels(text: str, name: str) -> dict[str, str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


@metrics
@pytest.mark.profile("llamacpp")
def test_llamacpp_metric_names(chat_server):
    """/metrics carries every metric llama-server emits, under its `llamacpp:` names."""
    chat_server.ok("/completion", {"prompt": "Hello", "n_predict": 2})
    m = chat_server.metrics()
    missing = [name for name in LLAMACPP if name not in m]
    assert not missing, f"llama-server's metrics missing: {missing}"


@metrics
@pytest.mark.extension
def test_llamacpp_metric_types_and_help_texts(chat_server):
    """llama-server's HELP texts and types (gauges for its non-monotone "counters"); vLLM's
    names only on request; refserver's extras under `refserver:`."""
    declared = _declared(chat_server.ok("/metrics"))
    for name, want in LLAMACPP.items():
        assert declared.get(name) == want, (name, declared.get(name))
    assert not [n for n in declared if n.startswith("vllm:")], "vLLM names without --metrics-compat vllm"
    for name in ("refserver:n_model_calls_total", "refserver:kv_cache_usage_ratio", "refserver:request_duration_seconds"):
        assert name in declared, f"refserver's own {name} missing"


def _router_server():
    server = ServerPreset.chat()
    server.n_slots, server.n_ctx, server.n_predict, server.context_shift = 2, 4096, None, True  # for hold_slot
    server.metrics_compat = "vllm"  # implies --metrics
    return server


@metrics
@pytest.mark.needs_flags
@pytest.mark.extension
def test_vllm_gauges_under_load(server_pool):
    """Two slots held by endless streams, two more requests queued: the picker must see 2
    running, 2 waiting, KV in use; all back to 0 once the clients leave."""
    server = server_pool("router", _router_server)
    declared = _declared(server.ok("/metrics"))
    for name in VLLM_GAUGES:
        assert declared.get(name, ("",))[0] == "gauge", (name, declared.get(name))
    for name in VLLM_COUNTERS:
        assert declared.get(name, ("",))[0] == "counter", name
    streams = [server.hold_slot(), server.hold_slot()]  # both slots generate until closed
    try:
        streams += [server.make_stream_request("POST", "/completion", {
            "prompt": "Once upon a time", "n_predict": 8, "stream": True}) for _ in range(2)]
        seen: dict[str, float] = {}

        def loaded() -> bool:
            seen.update(server.metrics())
            return seen["vllm:num_requests_running"] == 2 and seen["vllm:num_requests_waiting"] == 2

        assert wait_until(loaded, 10), {k: v for k, v in seen.items() if "requests" in k}
        assert seen["llamacpp:requests_processing"] == 2 and seen["llamacpp:requests_deferred"] == 2
        assert 0 < seen["vllm:kv_cache_usage_perc"] <= 1
        assert seen["vllm:kv_cache_usage_perc"] == seen["refserver:kv_cache_usage_ratio"]
        assert seen["refserver:kv_cache_tokens"] >= 2 * len(server.tokenize("Once upon a time"))
    finally:
        for stream in streams:
            stream.close()
    idle = {}

    def drained() -> bool:
        idle.update(server.metrics())
        return idle["vllm:num_requests_running"] == 0 and idle["vllm:num_requests_waiting"] == 0

    assert wait_until(drained, 10), idle
    assert idle["vllm:kv_cache_usage_perc"] == 0
    assert idle["llamacpp:n_busy_slots_per_decode"] > 1  # two slots decoded together
    assert idle["llamacpp:n_tokens_max"] > len(server.tokenize("Once upon a time"))
    text = server.ok("/metrics")
    config = _labels(text, "vllm:cache_config_info")
    assert int(config["block_size"]) * int(config["num_gpu_blocks"]) == 4096
    assert _labels(text, "vllm:num_requests_running")["model_name"] == server.props()["model_alias"]


@metrics
@pytest.mark.needs_flags
@pytest.mark.extension
def test_vllm_prefix_cache_counters_count_a_hit(server_pool):
    server = server_pool("router", _router_server)
    prompt = "Once upon a time, there was a brave little mouse who lived under the old oak tree. " * 3
    n_prompt = len(server.tokenize(prompt, add_special=True))
    before = server.metrics()
    first = server.ok("/completion", {"prompt": prompt, "n_predict": 2, "id_slot": 0})
    second = server.ok("/completion", {"prompt": prompt, "n_predict": 2, "id_slot": 0})
    after = server.metrics()
    assert second["timings"]["cache_n"] > first["timings"]["cache_n"]

    def grew(name: str) -> float:
        return after[name] - before[name]

    assert grew("vllm:prefix_cache_queries_total") == 2 * n_prompt
    assert grew("vllm:prefix_cache_hits_total") == first["timings"]["cache_n"] + second["timings"]["cache_n"]
    assert grew("llamacpp:prompt_tokens_cached_total") == grew("vllm:prefix_cache_hits_total")
    # llama-server's count of processed prompt tokens leaves the cached ones out
    assert grew("llamacpp:prompt_tokens_total") == 2 * n_prompt - grew("vllm:prefix_cache_hits_total")


@metrics
@pytest.mark.needs_flags
@pytest.mark.extension
def test_throughput_gauges_average_since_the_previous_scrape(server_pool):
    server = server_pool("router", _router_server)
    server.ok("/completion", {"prompt": "Once upon a time", "n_predict": 16, "ignore_eos": True})
    busy = server.metrics()
    assert busy["llamacpp:predicted_tokens_seconds"] > 0 and busy["llamacpp:prompt_tokens_seconds"] > 0
    quiet = server.metrics()  # nothing ran since the previous scrape
    assert quiet["llamacpp:predicted_tokens_seconds"] == 0 and quiet["llamacpp:prompt_tokens_seconds"] == 0


@metrics
@pytest.mark.needs_flags
@pytest.mark.extension
def test_unknown_metrics_compat_is_a_startup_error():
    proc = subprocess.run([sys.executable, "-m", "refserver", "--metrics-compat", "prometheus", "--port", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--metrics-compat" in proc.stderr and "vllm" in proc.stderr


# --------------------------------------------------------------------------- draining
@limits
@pytest.mark.needs_flags
def test_sigterm_drains_health_503_while_in_flight_requests_finish():
    """After SIGTERM the server keeps listening while a request is in flight: a fresh
    connection's /health and new requests get 503 (a gateway stops routing here and retries
    elsewhere), the in-flight stream ends normally, then the process exits 0."""
    server = ServerPreset.chat()
    server.n_slots, server.n_ctx, server.n_predict, server.shutdown_grace = 2, 4096, 1500, 30
    server.start()
    stream = server.make_stream_request("POST", "/v1/completions", {
        "prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}, timeout=60)
    it = iter(stream)
    next(it)
    server.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    health = requests.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 503
    assert "shutting down" in health.json()["error"]["message"]
    late = server.post("/v1/completions", {"prompt": "Once", "max_tokens": 4})
    assert late.status_code == 503 and error_of(late)["type"] == "unavailable_error"
    rest = list(it)
    assert stream.done and not any("error" in e for e in rest)
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
    assert server.process.wait(timeout=10) == 0
