"""Transport: oversized headers, transfer codings, slow bodies, and signals (issue 17)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from utils import REPO_ROOT, TARGET, ServerPreset

limits = pytest.mark.feature("limits")
pytestmark = pytest.mark.profile("refserver")
refserver_only = pytest.mark.skipif(not TARGET.runs_refserver, reason="refserver's own transport and signals")


def _exchange(server, raw: bytes, timeout: float = 20.0) -> bytes:
    """Send `raw` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                found = re.search(rb"Content-Length: *(\d+)", head, re.IGNORECASE)
                if found and len(body) >= int(found.group(1)):
                    break
        return out


@limits
def test_huge_headers_get_431_in_the_envelope(chat_server):
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    out = _exchange(chat_server, raw)
    assert out.startswith(b"HTTP/1.1 431")
    body = json.loads(out.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == 431


@limits
def test_identity_transfer_encoding_reads_the_body(chat_server):
    body = json.dumps({"content": "hello"}).encode()
    raw = (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: identity\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    out = _exchange(chat_server, raw)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert json.loads(out.partition(b"\r\n\r\n")[2])["tokens"]


@limits
@pytest.mark.needs_flags
@refserver_only
def test_trickled_body_is_cut_off():
    server = ServerPreset.chat()
    server.extra_args = ("--timeout", "2")
    server.start()
    with socket.create_connection((server.host, server.port), timeout=20) as s:
        s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        t0 = time.monotonic()
        answer = b""
        for _ in range(20):  # one byte a second: 100 bytes would take 100 s
            try:
                s.sendall(b" ")
            except OSError:
                break
            s.settimeout(1.0)
            try:
                answer = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            break  # an answer (408) or the server closed (b"")
        assert time.monotonic() - t0 < 15
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert server.get("/health").status_code == 200


def _start_raw(*args: str) -> tuple[subprocess.Popen, int]:
    """refserver as a bare subprocess; returns it once it has logged where it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "refserver", "--port", "0", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise RuntimeError("refserver did not start listening")


@limits
@pytest.mark.needs_flags
@refserver_only
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2])
def test_sigterm_while_loading_exits_cleanly(delay):
    proc, _ = _start_raw()
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 0, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err


@limits
@pytest.mark.needs_flags
@refserver_only
def test_second_sigterm_exits_at_once():
    """A stream whose client reads nothing keeps its handler busy (its writes never drain),
    so the first SIGTERM waits out the 60 s grace; the second ends the process at once."""
    proc, port = _start_raw("--shutdown-grace", "60", "-c", "2048", "-np", "1")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        stalled = requests.post(f"{url}/completion", json={
            "prompt": "Once upon a time", "n_predict": 1900, "ignore_eos": True, "stream": True, "n_probs": 100},
            stream=True, timeout=120)
        assert stalled.status_code == 200
        time.sleep(2.0)  # the generation fills the socket buffers
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # still in its grace period
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        assert time.monotonic() - t0 < 10 and code == 1
        stalled.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
