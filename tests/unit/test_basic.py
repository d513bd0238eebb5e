"""Server basics (llama.cpp test_basic.py and the metrics suite): health, props, models,
slots listing, the UI route, unknown routes, /metrics, start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from utils import TARGET, ServerPreset, error_of, metric, parse_prometheus

basic = pytest.mark.feature("basic")
metrics = pytest.mark.feature("metrics")
backend = pytest.mark.feature("backend")
pytestmark = pytest.mark.profile("openai")


@basic
@pytest.mark.parametrize("path", ["/health", "/v1/health"])
@pytest.mark.profile("llamacpp")
def test_health(chat_server, path):
    """GET /health answers 200 {"status": "ok"} once the model is loaded."""
    res = chat_server.get(path)
    assert res.status_code == 200
    assert res.body == {"status": "ok"}


@basic
@pytest.mark.profile("llamacpp")
def test_props_shape(chat_server):
    props = chat_server.props()
    for key in ("default_generation_settings", "total_slots", "model_path", "chat_template"):
        assert key in props, key
    settings = props["default_generation_settings"]
    assert isinstance(settings["n_ctx"], int) and settings["n_ctx"] > 0
    assert isinstance(settings["params"], dict)
    assert isinstance(props["total_slots"], int) and props["total_slots"] >= 1


@basic
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_props_reflect_flags(chat_server):
    props = chat_server.props()
    assert props["total_slots"] == chat_server.n_slots
    n_ctx_train = chat_server.ok("/v1/models")["data"][0]["meta"]["n_ctx_train"]
    # unified KV: each slot may use the whole context, up to the model's trained length
    assert props["default_generation_settings"]["n_ctx"] == min(chat_server.n_ctx, n_ctx_train)
    assert props["default_generation_settings"]["params"]["seed"] == chat_server.seed
    assert props["model_alias"] == chat_server.alias


@basic
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
@pytest.mark.parametrize("unified, per_slot", [(True, 1024), (False, 256)])
def test_props_ctx_over_slots(unified, per_slot):
    """--ctx-size is the total; with unified KV each slot may use all of it, with
    --no-kv-unified each of --parallel slots gets ctx/parallel."""
    server = ServerPreset.chat()
    server.n_ctx, server.n_slots, server.kv_unified = 1024, 4, unified
    server.start()
    props = server.props()
    assert props["total_slots"] == 4
    assert props["default_generation_settings"]["n_ctx"] == per_slot
    slots = server.slots()
    assert len(slots) == 4
    assert all(s["n_ctx"] == per_slot for s in slots)


@basic
@pytest.mark.parametrize("path", [pytest.param("/models", marks=pytest.mark.profile("llamacpp")), "/v1/models"])
def test_models(chat_server, path):
    """The model list: object "list", each model with id, object "model", created (int), owned_by."""
    body = chat_server.ok(path) if path == "/v1/models" else chat_server.get(path).body
    assert body["object"] == "list"
    assert isinstance(body["data"], list) and body["data"]
    model = body["data"][0]
    assert model["object"] == "model"
    assert isinstance(model["id"], str) and model["id"]
    assert isinstance(model["created"], int)
    assert "owned_by" in model


@basic
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_models_id_is_alias(chat_server):
    assert chat_server.ok("/v1/models")["data"][0]["id"] == chat_server.alias


@basic
@pytest.mark.profile("llamacpp")
def test_slots_listing(chat_server):
    slots = chat_server.slots()
    props = chat_server.props()
    assert isinstance(slots, list)
    assert len(slots) == props["total_slots"]
    for i, slot in enumerate(slots):
        assert slot["id"] == i
        assert isinstance(slot["is_processing"], bool)
        assert slot["n_ctx"] == props["default_generation_settings"]["n_ctx"]


@basic
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_no_slots_gives_501():
    server = ServerPreset.chat()
    server.server_slots = False
    server.start()
    res = server.get("/slots")
    assert res.status_code == 501
    assert error_of(res)["type"] == "not_supported_error"


@basic
@pytest.mark.profile("llamacpp")
def test_root_serves_html_or_404(chat_server):
    res = chat_server.get("/")
    if res.status_code == 200:
        assert "<!doctype html>" in str(res.body).lower()
    else:
        assert res.status_code == 404


@basic
@pytest.mark.parametrize("method,path", [("GET", "/no-such-route"), ("POST", "/v1/no-such-route")])
@pytest.mark.profile("refserver")
def test_unknown_route_is_404_envelope(chat_server, method, path):
    """An unknown route is a 404 with the JSON error envelope, type not_found_error (CONTRACT §6)."""
    res = chat_server.make_request(method, path, data={} if method == "POST" else None)
    assert res.status_code == 404
    assert error_of(res)["type"] == "not_found_error"


@basic
@pytest.mark.parametrize("method,path", [("GET", "/completion"), ("GET", "/v1/chat/completions"),
                                         ("DELETE", "/tokenize")])
@pytest.mark.profile("refserver")
def test_wrong_method_is_4xx_envelope(chat_server, method, path):
    """A known route with the wrong method is a 4xx with the JSON error envelope (CONTRACT §6)."""
    res = chat_server.make_request(method, path)
    assert 400 <= res.status_code < 500
    error_of(res)


# --------------------------------------------------------------------------- metrics
@metrics
@pytest.mark.profile("llamacpp")
def test_metrics_counts_requests(chat_server):
    before = chat_server.metrics()
    prompt = "Once upon a time, there was a little cat named Tom."
    chat_server.ok("/completion", {"prompt": prompt, "n_predict": 4, "temperature": 0})
    after = chat_server.metrics()
    n_prompt = len(chat_server.tokenize(prompt, add_special=True))
    # llama.cpp's metric names under the server's own namespace (llamacpp:, refserver:)
    for name in ("prompt_tokens_total", "tokens_predicted_total"):
        assert metric(after, name) is not None, f"{name} missing from /metrics"
    grew = metric(after, "prompt_tokens_total") - metric(before, "prompt_tokens_total", 0)
    assert 1 <= grew <= n_prompt
    assert metric(after, "tokens_predicted_total") - metric(before, "tokens_predicted_total", 0) == 4
    for name in ("requests_processing", "requests_deferred", "n_decode_total"):
        assert metric(after, name) is not None, f"{name} missing from /metrics"


@metrics
@pytest.mark.profile("llamacpp")
def test_metrics_prompt_cache_counter(chat_server):
    prompt = "Once upon a time, there was a little dog named Max who lived in a small house."
    data = {"prompt": prompt, "n_predict": 2, "temperature": 0, "id_slot": 0}
    chat_server.ok("/completion", data)
    second = chat_server.ok("/completion", data)
    assert second["timings"]["cache_n"] > 0
    m = chat_server.metrics()
    # CONTRACT §1 names it prompt_tokens_cache_total; llama.cpp's newest spells it "cached"
    cached = metric(m, "prompt_tokens_cache_total")
    if cached is None:
        cached = metric(m, "prompt_tokens_cached_total", 0)
    assert cached >= 1


@metrics
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_metrics_has_latency_histogram(chat_server):
    chat_server.ok("/completion", {"prompt": "Hello", "n_predict": 1})
    text = chat_server.ok("/metrics")
    assert "# TYPE" in text
    assert "_bucket{" in text, "no request latency histogram"


@metrics
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_metrics_disabled_gives_501():
    server = ServerPreset.one_slot()
    server.server_metrics = False
    server.start()
    res = server.get("/metrics")
    assert res.status_code == 501
    assert error_of(res)["type"] == "not_supported_error"


@metrics
@pytest.mark.profile("refserver")
def test_parse_prometheus_sums_labels():
    text = "# HELP x y\nfoo{a=\"1\"} 2\nfoo{a=\"2\"} 3\nbar 1.5\n"
    m = parse_prometheus(text)
    assert m["foo"] == 5 and m["bar"] == 1.5 and m['foo{a="1"}'] == 2


# --------------------------------------------------------------------------- start-up
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    argv = [TARGET.server_bin] if TARGET.server_bin else [sys.executable, "-m", "refserver"]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=60, check=False)


@backend
@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_unknown_flag_is_a_startup_error():
    proc = _run_cli("--no-such-flag", "--port", "0")
    assert proc.returncode != 0
    assert "no-such-flag" in proc.stderr


@backend
@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_missing_model_dir_is_a_startup_error(tmp_path):
    proc = _run_cli("-m", str(tmp_path / "missing"), "--port", "0")
    assert proc.returncode != 0
    assert "missing" in proc.stderr


@backend
@pytest.mark.needs_flags
@pytest.mark.golden
@pytest.mark.parametrize("backend_name", ["onnx-dml", "no-such-backend"])
@pytest.mark.profile("refserver")
def test_unavailable_backend_is_a_one_line_error(backend_name):
    """On this Linux machine DirectML is never available: start-up fails naming the fix."""
    proc = _run_cli("--backend", backend_name, "--port", "0")
    assert proc.returncode != 0
    assert backend_name in proc.stderr or "backend" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
