"""The browser's view: the chat page at `/` (driven in headless Chromium over the DevTools
protocol), `/docs` and `/openapi.json` (issue 17)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import subprocess
import time

import pytest
import requests
from tornado.websocket import websocket_connect
from utils import TARGET, ServerPreset

basic = pytest.mark.feature("basic")
pytestmark = pytest.mark.profile("refserver")
refserver_only = pytest.mark.skipif(not TARGET.runs_refserver, reason="refserver's own page and schema")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@basic
@refserver_only
def test_root_is_the_chat_page(chat_server):
    res = requests.get(f"{chat_server.url}/", timeout=10)
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/html")
    page = res.text
    assert page.lower().startswith("<!doctype html>")
    assert "/v1/chat/completions" in page and "stream: true" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing from a CDN


@basic
@refserver_only
def test_openapi_lists_every_route_with_its_request_model(chat_server):
    spec = chat_server.ok("/openapi.json")
    assert spec["openapi"].startswith("3.")
    for path in ("/health", "/v1/models", "/v1/models/{id}", "/completion", "/v1/completions",
                 "/v1/chat/completions", "/tokenize", "/detokenize", "/slots", "/props", "/docs"):
        assert path in spec["paths"], path
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = spec["components"]["schemas"][chat["$ref"].split("/")[-1]]["properties"]
    assert {"messages", "temperature", "max_completion_tokens", "tools"} <= set(fields)
    assert "head" in spec["paths"]["/health"]
    for path in ("/v1/responses", "/v1/messages", "/tokenize"):
        assert "requestBody" in spec["paths"][path]["post"], path
    assert "delete" in spec["paths"]["/v1/responses/{id}"]
    docs = requests.get(f"{chat_server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "/openapi.json" in docs.text


@basic
@pytest.mark.needs_flags
@refserver_only
def test_no_webui_means_no_page():
    server = ServerPreset.chat()
    server.extra_args = ("--no-webui",)
    server.start()
    assert server.get("/").status_code == 404
    assert server.get("/openapi.json").status_code == 200  # the API's schema stays


class DevTools:
    """The least of Chrome's DevTools protocol: commands on one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.write_message(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.read_message(), 30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise TimeoutError(f"never true: {expression}")


def _launch_chromium(profile) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1100,800", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, f"http://127.0.0.1:{found.group(1)}"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("chromium did not start its DevTools endpoint")


@contextlib.contextmanager
def _browser(tmp_path):
    """A headless Chromium; yields the DevTools websocket URL of its page."""
    proc, devtools_url = _launch_chromium(tmp_path / "profile")
    try:
        targets = requests.get(f"{devtools_url}/json/list", timeout=10).json()
        yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _open(ws_url: str, page_url: str) -> DevTools:
    dt = DevTools(await websocket_connect(ws_url, max_message_size=64 << 20))
    await dt.call("Page.enable")
    await dt.call("Page.navigate", url=page_url)
    await dt.wait_for("document.readyState === 'complete' && !!document.getElementById('send')")
    await dt.wait_for("document.getElementById('model').textContent !== 'refserver'")  # /v1/models answered
    return dt


async def _ask(dt: DevTools, question: str) -> None:
    await dt.js(f"document.getElementById('input').value = {json.dumps(question)}")
    await dt.js("document.getElementById('send').click()")


async def _chat_in_browser(ws_url: str, page_url: str, question: str) -> tuple[dict, bytes]:
    """Ask `question` on the page; returns what the page shows, and its screenshot (PNG)."""
    dt = await _open(ws_url, page_url)
    try:
        await dt.js("document.getElementById('temperature').value = '0'")
        await _ask(dt, question)
        await dt.wait_for("document.body.dataset.state === 'done'")
        shot = await dt.call("Page.captureScreenshot", format="png")
        seen = await dt.js("""({
            answer: document.querySelector('.msg.assistant').textContent,
            error: !!document.querySelector('.msg.error'),
            status: document.getElementById('status').textContent})""")
        return seen, base64.b64decode(shot["data"])
    finally:
        dt.ws.close()


@basic
@refserver_only
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_chat_page_answers_in_headless_chromium(chat_server, tmp_path):
    question = "What is the capital of France?"
    shot = tmp_path / "chat-page.png"
    with _browser(tmp_path) as ws_url:
        seen, png = asyncio.run(_chat_in_browser(ws_url, f"{chat_server.url}/", question))
    shot.write_bytes(png)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not seen["error"] and seen["answer"].strip()
    assert re.search(r"\d+ tokens, [\d.]+ tokens/s", seen["status"]), seen["status"]
    # the page streams what the API answers (greedy: the same text)
    api = chat_server.ok("/v1/chat/completions", {"messages": [{"role": "user", "content": question}],
                                                  "temperature": 0, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                                                  "max_tokens": 256})
    assert seen["answer"] == api["choices"][0]["message"]["content"]
    if TARGET.is_refserver:
        assert "Paris" in seen["answer"]


async def _stop_while_queued(ws_url: str, server) -> str:
    dt = await _open(ws_url, f"{server.url}/")
    try:
        await _ask(dt, "Hello")
        deadline = time.monotonic() + 60
        while (await asyncio.to_thread(server.props))["requests_deferred"] != 1:  # the page's request waits
            assert time.monotonic() < deadline, "the page's request never reached the queue"
            await asyncio.sleep(0.1)
        await dt.js("document.getElementById('stop').click()")
        await dt.wait_for("document.body.dataset.state === 'done'")
        while (await asyncio.to_thread(server.props))["requests_deferred"] != 0:  # the server dropped it
            assert time.monotonic() < deadline, "the stopped request stayed queued"
            await asyncio.sleep(0.1)
        return await dt.js("document.getElementById('status').textContent")
    finally:
        dt.ws.close()


@basic
@pytest.mark.needs_flags
@refserver_only
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_stop_button_cancels_the_request(tmp_path):
    """The only slot is held by an endless generation, so the page's request waits in the
    queue until Stop: the page says so and the server drops the request."""
    server = ServerPreset.chat()
    server.n_slots, server.n_predict, server.context_shift = 1, None, True
    server.start()
    hold = server.hold_slot()
    try:
        with _browser(tmp_path) as ws_url:
            status = asyncio.run(_stop_while_queued(ws_url, server))
    finally:
        hold.close()
    assert status == "stopped"
