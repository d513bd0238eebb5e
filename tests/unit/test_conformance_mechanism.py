"""The suite's conformance machinery: discovery of what a target offers, the skip of a route
it lacks, the liveness check, and the report's per-failure clauses and not-run tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import discovery
import pytest
import utils
from conformance_report import Result, render
from utils import TARGET, ServerProcess, free_port, target_answers

pytestmark = [pytest.mark.feature("harness"), pytest.mark.profile("refserver")]


class _OpenAIOnly(BaseHTTPRequestHandler):
    """A server with /health and /v1/* only: every other route is a 404."""

    def _answer(self) -> None:
        if self.path in ("/health", "/v1/completions"):
            body, status = b'{"status": "ok"}', 200
        else:
            body, status = b"Not Found", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def openai_only():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _OpenAIOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_capability_of_routes():
    assert discovery.capability_of("/slots?fail_on_no_slot=1") == "slots"
    assert discovery.capability_of("/completion") == "completion"
    assert discovery.capability_of("/v1/responses/abc/input_items") == "responses"
    assert discovery.capability_of("/v1/chat/completions") is None
    assert discovery.capability_of("/v1/completions") is None


def test_probe_of_refserver_offers_every_layer(chat_server):
    found = discovery.probe(chat_server.url)
    for cap in ("props", "completion", "tokenize", "apply_template", "slots", "metrics", "refserver"):
        assert found.offers(cap), (cap, found.why_absent(cap))
    assert all(found.layer_absent(layer) is None for layer in ("openai", "llamacpp", "refserver"))


def test_probe_of_an_openai_only_server(openai_only):
    found = discovery.probe(openai_only)
    assert found.layer_absent("openai") is None
    assert "GET /props -> 404" in found.layer_absent("llamacpp")
    assert found.layer_absent("refserver")
    assert not found.offers("slots") and not found.offers("tokenize")


def test_a_route_the_target_lacks_skips_the_test(openai_only, monkeypatch):
    monkeypatch.setattr(TARGET, "discovery", discovery.probe(openai_only))
    monkeypatch.setattr(utils, "IDENTITY", {"target": "kept for the report"})
    server = ServerProcess()
    server._attach(openai_only, timeout=5)
    assert server.offered(["/completion", "/v1/completions", "/tokenize"]) == ["/v1/completions"]
    with pytest.raises(pytest.skip.Exception, match="lacks props"):
        server.props()


def test_target_answers(openai_only):
    assert target_answers(openai_only)
    assert not target_answers(f"http://127.0.0.1:{free_port()}", tries=1)


def test_report_names_clause_source_and_not_run():
    failed = Result("chat", "openai", "failed", "AssertionError: 200 != 400", "a rule.", "OpenAI API reference x")
    results = {"t::a": Result("chat", "openai"), "t::b": failed,
               "t::c": Result("chat", "llamacpp", "skipped", "the target does not offer the llamacpp layer"),
               "t::d": Result("chat", "openai", "not run", "not run: the target stopped answering after t::b")}
    text = render(identity={"target": "http://x"}, results=results, features={"chat": "chat"},
                  profiles=None, discovered=None, server_bin=None, dead_after="t::b")
    assert "1 passed, 1 failed, 1 skipped, 1 not run" in text
    assert "| openai | 1 | 1 | 0 | 1 |" in text and "| llamacpp | 0 | 0 | 1 | 0 |" in text
    assert "- `t::b` (openai, chat)\n  - clause: a rule.\n  - documented: OpenAI API reference x" in text
    assert "stopped answering after `t::b`" in text


def test_server_bin_lacks_only_the_refserver_layer(monkeypatch):
    """A binary the harness starts (`--server-bin`) is probed for nothing: it offers the openai
    and llamacpp layers; refserver's own choices are skipped, and the report says why."""
    monkeypatch.setattr(TARGET, "server_url", None)
    monkeypatch.setattr(TARGET, "discovery", None)
    monkeypatch.setattr(TARGET, "server_bin", "/opt/llama-server")
    assert TARGET.layer_absent("openai") is None and TARGET.layer_absent("llamacpp") is None
    assert "--server-bin /opt/llama-server" in TARGET.layer_absent("refserver")
    text = render(identity={}, results={}, features={}, profiles=None, discovered=None,
                  server_bin="/opt/llama-server", dead_after=None)
    assert "the refserver layer is absent" in text
    monkeypatch.setattr(TARGET, "server_bin", None)
    assert TARGET.layer_absent("refserver") is None
