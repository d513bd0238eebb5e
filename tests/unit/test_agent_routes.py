"""The server's guarantees on the Responses and Messages routes: --api-key, CORS,
--max-queue (in each API's error shape), cancellation on disconnect, keepalive while
queued, and the bounded response store."""

from __future__ import annotations

import json
import signal
import socket
import time

import anthropic
import openai
import pytest
import requests
from utils import ServerPreset, SSEComment, deferred_requests, parallel_function_calls, wait_until

pytestmark = [pytest.mark.needs_flags, pytest.mark.profile("refserver")]

RESPONSES = ("/v1/responses", {"input": "Tell me a story.", "ignore_eos": True})
MESSAGES = ("/v1/messages", {"model": "m", "max_tokens": 100000, "ignore_eos": True,
                             "messages": [{"role": "user", "content": "Tell me a story."}]})
ROUTES = [pytest.param(*RESPONSES, marks=pytest.mark.feature("responses"), id="responses"),
          pytest.param(*MESSAGES, marks=pytest.mark.feature("messages"), id="messages")]


@pytest.fixture(scope="module")
def long_server(server_pool):
    def make():
        server = ServerPreset.one_slot()
        # endless requests (no -n, context shift): each runs until its client leaves
        server.n_ctx, server.n_predict, server.context_shift, server.keepalive = 2048, -1, True, 0.5
        server.server_metrics = True
        return server
    return server_pool("long", make)


@pytest.mark.parametrize("path,body", ROUTES)
def test_stream_cancel_frees_slot(long_server, path, body):
    stream = long_server.make_stream_request("POST", path, {**body, "stream": True})
    it = iter(stream)
    for _ in range(6):
        next(it)
    assert long_server.slots()[0]["is_processing"]
    stream.close()
    assert long_server.wait_slots_idle(1.0), "slot still busy 1 s after the client left"


@pytest.mark.parametrize("path,body", ROUTES)
def test_non_stream_cancel_frees_slot(long_server, path, body):
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{long_server.url}{path}", json=body, timeout=(5, 0.3))
    time.sleep(0.3)  # the request may still be arriving at its slot
    assert long_server.wait_slots_idle(1.0), "slot still busy 1 s after the client left"


@pytest.mark.parametrize("path,body", ROUTES)
def test_keepalive_while_queued(long_server, path, body):
    """The only slot is busy: a queued stream gets keepalives every --sse-keepalive (SSE
    comments on Responses, `ping` events on Messages, as Anthropic sends them)."""
    first = long_server.make_stream_request("POST", "/completion", {"prompt": "Once", "n_predict": -1,
                                                                    "ignore_eos": True, "stream": True})
    next(iter(first))
    try:
        stream = long_server.make_stream_request("POST", path, {**body, "stream": True}, timeout=30, comments=True)
        kinds = []
        for item in stream:
            kinds.append("comment" if isinstance(item, SSEComment) else item["type"])
            if kinds.count("ping" if path == "/v1/messages" else "comment") >= 2:
                break
        assert kinds[0] in ("response.created", "message_start")
        assert not any("delta" in k for k in kinds), "keepalives come while the request waits"
        stream.close()
    finally:
        first.close()
    assert long_server.wait_slots_idle(2.0)


def _queue_full_server():
    server = ServerPreset.one_slot()
    server.n_ctx, server.n_predict, server.max_queue = 2048, -1, 1
    server.context_shift, server.server_metrics = True, True
    server.start()
    first = server.hold_slot()
    waiting = socket.create_connection((server.host, server.port))
    body = json.dumps({"prompt": "x", "n_predict": 1}).encode()
    waiting.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert wait_until(lambda: deferred_requests(server) >= 1, 30), "the raw request was never queued"
    return server, [first, waiting]


@pytest.mark.feature("responses")
@pytest.mark.extension
def test_full_queue_responses_is_503():
    server, held = _queue_full_server()
    try:
        for stream in (False, True):
            res = server.post("/v1/responses", {"input": "Hi", "max_output_tokens": 1, "stream": stream}, timeout=30)
            assert res.status_code == 503, res.body
            assert res.body["error"]["type"] == "unavailable_error" and int(res.headers["Retry-After"]) >= 1
    finally:
        for h in held:
            h.close()


@pytest.mark.feature("messages")
@pytest.mark.extension
def test_full_queue_messages_is_overloaded():
    server, held = _queue_full_server()
    try:
        for stream in (False, True):
            res = server.post("/v1/messages", {**MESSAGES[1], "max_tokens": 1, "stream": stream}, timeout=30)
            assert res.status_code == 529, res.body
            assert res.body == {"type": "error", "error": {"type": "overloaded_error",
                                                           "message": res.body["error"]["message"]}}
            assert int(res.headers["Retry-After"]) >= 1
    finally:
        for h in held:
            h.close()


@pytest.fixture(scope="module")
def keyed_server(server_pool):
    def make():
        server = ServerPreset.chat()
        server.api_key = "sk-test"
        return server
    return server_pool("keyed", make)


@pytest.mark.feature("responses")
@pytest.mark.profile("llamacpp")  # --api-key and CORS are llama-server's
def test_responses_api_key_and_cors(keyed_server):
    bad = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model="m", input="Hi", max_output_tokens=2)
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="sk-test", max_retries=0)
    assert client.responses.create(model="m", input="Hi", max_output_tokens=2).status
    for path in ("/v1/responses", "/v1/messages", "/v1/messages/count_tokens"):
        pre = requests.options(f"{keyed_server.url}{path}", headers={
            "Origin": "http://example.com", "Access-Control-Request-Method": "POST"}, timeout=10)
        assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "http://example.com"


@pytest.mark.feature("messages")
@pytest.mark.profile("llamacpp")
def test_messages_api_key_and_cors(keyed_server):
    with pytest.raises(anthropic.AuthenticationError) as err:
        anthropic.Anthropic(base_url=keyed_server.url, api_key="wrong", max_retries=0).messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.body["error"]["type"] == "authentication_error"
    res = requests.post(f"{keyed_server.url}/v1/messages", headers={"x-api-key": "sk-test", "Origin": "http://a.b"},
                        json={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
                        timeout=60)
    assert res.status_code == 200 and res.headers["Access-Control-Allow-Origin"] == "http://a.b"


@pytest.mark.feature("responses")
@pytest.mark.extension
def test_store_is_bounded(server_pool):
    def make():
        server = ServerPreset.chat()
        server.responses_store_size = 1
        return server

    server = server_pool("store1", make)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    first = client.responses.create(model="m", input="Hi", max_output_tokens=2)
    second = client.responses.create(model="m", input="Hello", max_output_tokens=2)
    assert client.responses.retrieve(second.id).id == second.id
    with pytest.raises(openai.NotFoundError):  # --responses-store-size 1: the older one is evicted
        client.responses.retrieve(first.id)


@pytest.mark.feature("responses")
@pytest.mark.extension
def test_shutdown_ends_streams_in_each_apis_shape():
    """SIGTERM past --shutdown-grace: a Responses stream ends with `response.failed`, a
    Messages stream with an `error` event."""
    server = ServerPreset.chat()  # endless streams (no -n, context shift) outlive the grace
    server.n_ctx, server.n_slots, server.n_predict, server.shutdown_grace = 2048, 2, -1, 0.5
    server.context_shift = True
    server.start()
    streams = [server.make_stream_request("POST", path, {**body, "stream": True}) for path, body in (RESPONSES, MESSAGES)]
    iters = [iter(s) for s in streams]
    for it in iters:
        for _ in range(4):
            next(it)
    server.send_signal(signal.SIGTERM)
    responses_tail, messages_tail = (list(it)[-1] for it in iters)
    assert responses_tail["type"] == "response.failed"
    assert responses_tail["response"]["status"] == "failed" and responses_tail["response"]["error"]["message"]
    assert messages_tail["type"] == "error" and messages_tail["error"]["type"] == "overloaded_error"
    assert server.process.wait(timeout=10) == 0


@pytest.mark.feature("responses")
@pytest.mark.extension
def test_shutdown_ends_background_responses():
    """A background response is waited for within --shutdown-grace like any request, then
    fails: its followers get `response.failed`, and the server exits cleanly."""
    server = ServerPreset.one_slot()
    server.n_ctx, server.n_predict, server.shutdown_grace, server.context_shift = 2048, -1, 0.5, True
    server.start()
    stream = server.make_stream_request("POST", "/v1/responses", {**RESPONSES[1], "background": True, "stream": True})
    it = iter(stream)
    assert next(e for e in it if e["type"] == "response.output_text.delta")
    server.send_signal(signal.SIGTERM)
    tail = list(it)[-1]
    assert tail["type"] == "response.failed" and tail["response"]["error"]["message"]
    assert server.process.wait(timeout=10) == 0


@pytest.mark.feature("responses")
def test_concurrent_requests_do_not_mix(chat_server):
    """Responses and Messages requests in flight together (streamed and not) give what each
    gives alone: nothing of one leaks into another."""
    oa = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="x", max_retries=0, timeout=120)
    an = anthropic.Anthropic(base_url=chat_server.url, api_key="x", max_retries=0, timeout=120)
    questions = ["What is the capital of France?", "What is 2 plus 3?", "Tell me about cats.", "What is the capital of Italy?"]

    def responses(q, stream):
        if not stream:
            return oa.responses.create(model="m", input=q, max_output_tokens=24, temperature=0).output_text
        with oa.responses.stream(model="m", input=q, max_output_tokens=24, temperature=0) as s:
            return "".join(e.delta for e in s if e.type == "response.output_text.delta")

    def messages(q, stream):
        kw = {"model": "m", "max_tokens": 24, "messages": [{"role": "user", "content": q}], "extra_body": {"temperature": 0}}
        if not stream:
            return an.messages.create(**kw).content[0].text
        with an.messages.stream(**kw) as s:
            return "".join(s.text_stream)

    calls = [(responses, (questions[0], True)), (messages, (questions[1], True)),
             (responses, (questions[2], False)), (messages, (questions[3], False))]
    alone = [f(*args) for f, args in calls]
    together = parallel_function_calls(calls)
    assert together == alone and len(set(alone)) == 4
