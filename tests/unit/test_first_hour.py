"""A new user's first hour: llama-server command lines, defaults that work with popular
clients, start-up messages, and the small routes clients probe (issue 17)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest
import requests
from utils import REPO_ROOT, TARGET, ServerPreset, ServerProcess, error_of

basic = pytest.mark.feature("basic")
backend = pytest.mark.feature("backend")
security = pytest.mark.feature("security")
slots = pytest.mark.feature("slots")
pytestmark = pytest.mark.profile("refserver")

EMBEDDED = REPO_ROOT / "refserver" / "models" / "chat"
refserver_cli = pytest.mark.skipif(not TARGET.runs_refserver, reason="refserver's own command line")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refserver", *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO_ROOT)


# --------------------------------------------------------------------------- flags
@pytest.mark.profile("refserver")  # accepting flags llama-server dropped (--mlock, --no-mmap) is refserver's
@backend
@pytest.mark.needs_flags
def test_llama_server_command_line_starts():
    """Flags that mean nothing here are accepted, with their values, and named in one log line."""
    server = ServerPreset.chat()
    server.extra_args = ("-ngl", "99", "-fa", "on", "--cont-batching", "--no-webui", "-ctk", "f16", "--mlock",
                         "-ub", "512", "--no-mmap", "-fa", "--log-colors", "off")
    server.start()
    assert server.ok("/completion", {"prompt": "Hi", "n_predict": 2})["tokens_predicted"] >= 1
    if TARGET.runs_refserver:
        lines = [ln for ln in server.stderr_tail(20000).splitlines() if "no effect here" in ln]
        assert len(lines) == 1
        for shown in ("-ngl 99", "-fa on", "--cont-batching", "-ctk f16", "--mlock", "-ub 512", "--log-colors off"):
            assert shown in lines[0]
        assert "--no-webui" not in lines[0]  # that one acts: no chat page
        assert server.get("/").status_code == 404


@backend
@pytest.mark.needs_flags
@refserver_cli
@pytest.mark.parametrize("args", [["-hf", "ggml-org/x-GGUF"], ["--hf-repo", "a/b"], ["-hff", "m.gguf"],
                                  ["-mu", "https://example.com/m.gguf"], ["--gpt-oss-20b-default"]])
def test_hub_flags_fail_saying_how_to_pass_a_directory(args):
    proc = _run_cli(*args, "--port", "0")
    assert proc.returncode == 2
    assert args[0] in proc.stderr and "-m DIR" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_tls_flags_fail_rather_than_serve_plain_http():
    proc = _run_cli("--ssl-cert-file", "cert.pem", "--port", "0")
    assert proc.returncode == 2 and "reverse proxy" in proc.stderr


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_unknown_template_name_is_an_error_listing_the_names():
    proc = _run_cli("--chat-template", "nosuchname", "--port", "0")
    assert proc.returncode == 2
    assert "nosuchname" in proc.stderr and "chatml" in proc.stderr and "llama3" in proc.stderr


@backend
@refserver_cli
def test_help_lists_template_names_and_llama_server_flags():
    proc = _run_cli("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for word in ("chatml", "llama3", "mistral-v7", "no effect here", "--no-kv-unified", "--top-k"):
        assert word in text


@backend
@pytest.mark.needs_flags
@refserver_cli
@pytest.mark.parametrize("value", ["1", "16", "-5"])
def test_tiny_context_is_refused(value):
    proc = _run_cli("-c", value, "--port", "0")
    assert proc.returncode == 2 and "--ctx-size" in proc.stderr


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_model_file_means_its_directory():
    server = ServerProcess(model=str(EMBEDDED / "model.onnx"))
    server.start()
    assert server.ok("/v1/models")["data"][0]["id"] == "chat"  # the directory's name


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_model_path_errors_say_what_is_wrong(tmp_path):
    missing = _run_cli("-m", str(tmp_path / "nothing-here"), "--port", "0")
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    wrong = _run_cli("-m", str(gguf), "--port", "0")
    assert wrong.returncode == 1 and "is a file" in wrong.stderr and "ONNX" in wrong.stderr


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_sampling_flags_set_request_defaults():
    server = ServerPreset.chat()
    server.extra_args = ("--top-k", "7", "--min-p", "0.2", "--repeat-penalty", "1.3")
    server.start()
    params = server.props()["default_generation_settings"]["params"]
    assert (params["top_k"], params["min_p"], params["repeat_penalty"]) == (7, 0.2, 1.3)
    body = server.ok("/completion", {"prompt": "Hi", "n_predict": 1, "top_k": 3})
    assert body["generation_settings"]["top_k"] == 3 and body["generation_settings"]["min_p"] == 0.2


# --------------------------------------------------------------------------- listening
def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.profile("llamacpp")
@basic
@pytest.mark.needs_flags
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_host_list_listens_on_each_address():
    server = ServerPreset.chat()
    server.extra_args = ("--host", "127.0.0.1,::1")  # after the harness's --host: the last one wins
    server.start()
    for host in ("127.0.0.1", "[::1]"):
        assert requests.get(f"http://{host}:{server.port}/health", timeout=10).status_code == 200


@basic
@pytest.mark.needs_flags
@refserver_cli
def test_port_zero_logs_the_port_it_bound():
    proc = subprocess.Popen([sys.executable, "-m", "refserver", "--port", "0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited before logging where it listens"
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port and port != 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the logged port never answered /health")
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- defaults
@slots
@pytest.mark.needs_flags
def test_default_slots_serve_n_2_from_the_openai_sdk():
    """No -np: several slots, each of which may use the whole context (unified KV)."""
    openai = pytest.importorskip("openai")
    server = ServerProcess(model=TARGET.model, n_ctx=1024)
    server.start()
    props = server.props()
    assert props["total_slots"] >= 2
    n_ctx_train = server.ok("/v1/models")["data"][0]["meta"]["n_ctx_train"]
    assert props["default_generation_settings"]["n_ctx"] == min(1024, n_ctx_train)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    out = client.chat.completions.create(model="any", n=2, max_tokens=4,
                                         messages=[{"role": "user", "content": "Hi"}])
    assert sorted(c.index for c in out.choices) == [0, 1]


@backend
@pytest.mark.needs_flags
@refserver_cli
def test_startup_says_what_it_serves_and_health_polls_stay_quiet():
    server = ServerProcess(model=TARGET.model, n_ctx=1024)
    server.start()
    for _ in range(3):
        server.get("/health")
    server.get("/props")  # logged after its response has left: wait for the line
    deadline = time.monotonic() + 10
    while "route=/props" not in server.stderr_tail(20000) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.stderr_tail(20000)
    for fact in ("4 slots", "each up to 1024 tokens", "sharing 1024 tokens", "MiB", "listening on http://",
                 "/v1/chat/completions", "chat page"):
        assert fact in log, fact
    assert "route=/props" in log and "route=/health" not in log


# --------------------------------------------------------------------------- routes
@pytest.mark.profile("llamacpp")
@basic
@pytest.mark.needs_flags
def test_aliases_and_model_retrieve():
    server = ServerPreset.chat()
    server.alias = "first,second,third"
    server.start()
    entry = server.ok("/v1/models")["data"][0]
    assert entry["id"] == "first" and entry["aliases"] == ["first", "second", "third"]
    for name in ("first", "third"):
        assert server.ok(f"/v1/models/{name}")["id"] == "first"
    res = server.get("/v1/models/no-such-model")
    assert res.status_code == 404 and "no-such-model" in error_of(res)["message"]


@pytest.mark.profile("openai")
@basic
def test_models_retrieve_with_the_openai_sdk(chat_server):
    """GET /v1/models/{model} returns that model object; a model the server lacks is a 404."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=chat_server.api_key or "none")
    listed = client.models.list().data[0].id
    assert client.models.retrieve(listed).id == listed
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("org/no-such-model")


@pytest.mark.profile("llamacpp")
@basic
def test_head_health(chat_server):
    res = requests.head(f"{chat_server.url}/health", timeout=10)
    assert res.status_code == 200 and res.content == b""


@pytest.mark.profile("llamacpp")
@security
@pytest.mark.needs_flags
def test_cors_localhost_means_every_local_origin():
    server = ServerPreset.chat()
    server.cors_origins = "localhost"
    server.start()
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "https://localhost", "http://[::1]:8000"):
        res = server.get("/v1/models", headers={"Origin": origin})
        assert res.headers.get("Access-Control-Allow-Origin") == origin, origin
    for origin in ("https://example.com", "http://localhost.example.com"):
        res = server.get("/v1/models", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in res.headers, origin


@pytest.mark.profile("llamacpp")
@security
def test_preflight_allows_delete(chat_server):
    res = chat_server.make_request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "DELETE"})
    assert res.status_code in (200, 204)
    methods = {m.strip() for m in res.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "DELETE"} <= methods or "*" in methods


@basic
@pytest.mark.needs_flags
def test_strict_accepts_fields_openai_documents():
    server = ServerPreset.one_slot()
    server.strict = True
    server.start()
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2}
    standard = {"metadata": {"user": "u1"}, "store": False, "service_tier": "auto", "reasoning_effort": "low",
                "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
                "parallel_tool_calls": True, "verbosity": "low", "web_search_options": {}, "user": "u1"}
    for field, value in standard.items():
        res = server.post("/v1/chat/completions", {**chat, field: value})
        assert res.status_code == 200, (field, res.body)
    res = server.post("/v1/chat/completions", {**chat, "max_token": 2})
    assert res.status_code == 400 and "max_token" in error_of(res)["message"]
