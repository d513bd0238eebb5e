"""End-to-end smoke checks of `python -m refserver` itself: start-up errors, the two main
endpoints streamed and not, the error envelope, API keys, keepalive, SIGTERM.

Each test launches the real server on stories260K (a free port on 127.0.0.1) and stops it.
The full suites live in the other test modules.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from shared_models import needs_shared, stories260k_dir

from refserver.procs import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
MODEL = stories260k_dir() / "onnx-genai"
pytestmark = [pytest.mark.needs_flags, pytest.mark.profile("refserver")]  # every test starts its own server
feature = pytest.mark.feature


class Server:
    def __init__(self, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "refserver", "-m", str(MODEL), "--host", "127.0.0.1",
                     "--port", str(self.port), "-c", "512", "--seed", "42", *extra]
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError("server not healthy")

    def stop(self) -> int:
        stop_process(self.proc, timeout=10)
        self.proc.stderr.close()
        return self.proc.returncode

    def post(self, path: str, body, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=60, **kw)


def sse(res: requests.Response) -> tuple[list, list[str]]:
    """(decoded data events, comment lines) of an SSE response."""
    events, comments = [], []
    for line in res.iter_lines():
        if line.startswith(b"data: "):
            payload = line[6:].decode()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        elif line.startswith(b":"):
            comments.append(line.decode())
    return events, comments


@pytest.fixture(scope="module")
def server():
    s = Server("-np", "2", "--temp", "0").wait_ready()
    yield s
    s.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refserver", *args], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@feature("limits")
def test_unknown_flag_is_one_line_exit_2():
    res = run_cli("--no-such-flag")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--no-such-flag" in res.stderr


@feature("limits")
def test_missing_model_dir_is_one_line_exit_1(tmp_path):
    res = run_cli("-m", str(tmp_path / "nope"), "--port", str(free_port()))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "-m DIR" in res.stderr


@feature("streaming")
@needs_shared
def test_completion_stream_matches_non_stream(server):
    body = {"prompt": "Once upon a time", "n_predict": 12}
    full = server.post("/completion", body).json()
    assert full["stop"] is True and full["tokens_predicted"] == 12 and full["stop_type"] == "limit"
    res = server.post("/completion", {**body, "stream": True}, stream=True)
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/event-stream")
    events, _ = sse(res)
    assert "[DONE]" not in events and events[-1]["stop"] is True
    assert all(isinstance(e["tokens"][0], int) for e in events[:-1])
    assert "".join(e["content"] for e in events) == full["content"]


@feature("streaming")
@needs_shared
def test_chat_stream_and_non_stream(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
    full = server.post("/v1/chat/completions", body).json()
    choice = full["choices"][0]
    assert full["id"].startswith("chatcmpl-") and choice["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 6 and full["system_fingerprint"].startswith("b")
    res = server.post("/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}},
                      stream=True)
    events, _ = sse(res)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content") or "" for d in deltas) == choice["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and deltas[-1] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


@feature("basic")
@needs_shared
@pytest.mark.parametrize("method,path,data,status", [
    ("GET", "/v1/models/nope", None, 404), ("GET", "/nope", None, 404), ("GET", "/completion", None, 405),
    ("POST", "/completion", b"{bad", 400), ("POST", "/completion", b"[]", 400),
    ("POST", "/completion", b'{"prompt": "x", "top_p": 7}', 400), ("GET", "/metrics", None, 501),
])
def test_error_envelope(server, method, path, data, status):
    res = requests.request(method, server.url + path, data=data, timeout=30)
    assert res.status_code == status
    err = res.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["type"]
    assert res.headers.get("X-Request-Id")


@feature("streaming")
@needs_shared
def test_context_exceeded_before_stream(server):
    res = server.post("/completion", {"prompt": "word " * 400, "stream": True})
    assert res.status_code == 400
    assert res.json()["error"]["type"] == "exceed_context_size_error"


@feature("security")
@needs_shared
def test_api_key():
    s = Server("--api-key", "k1", "--api-key", "k2")
    try:
        s.wait_ready()
        assert requests.get(s.url + "/v1/models", timeout=10).status_code == 200
        res = s.post("/completion", {"prompt": "x", "n_predict": 1})
        assert res.status_code == 401 and res.json()["error"]["message"] == "Invalid API Key"
        assert s.post("/completion", {"prompt": "x", "n_predict": 1},
                      headers={"Authorization": "Bearer k2"}).status_code == 200
        assert s.post("/completion", {"prompt": "x", "n_predict": 1},
                      headers={"X-Api-Key": "k1"}).status_code == 200
    finally:
        s.stop()


@feature("keepalive")
@needs_shared
def test_keepalive_while_queued_then_sigterm_exits_0():
    """One slot: a second stream waits in the queue and gets keepalive comments; SIGTERM
    mid-stream ends both streams and the process exits 0."""
    s = Server("-np", "1", "--sse-keepalive", "0.05", "--shutdown-grace", "0.5", "-n", "-1")
    try:
        s.wait_ready()
        first = s.post("/completion", {"prompt": "Once", "n_predict": -1, "ignore_eos": True, "stream": True},
                       stream=True)
        lines = first.iter_lines()
        next(lines)  # the first is generating
        result = {}

        def second():
            res = s.post("/completion", {"prompt": "Twice", "n_predict": 4, "stream": True}, stream=True)
            result["events"], result["comments"] = sse(res)

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        for _ in lines:  # the first stream ends (with an error event) within the grace
            pass
        t.join(30)
        assert result["comments"] and result["comments"][0] == ": keepalive"
        assert s.proc.wait(15) == 0
    finally:
        s.stop()
