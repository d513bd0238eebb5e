"""Client disconnects free their slot at the next step (CONTRACT §0, llama.cpp cancel_request)."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from utils import ServerPreset, parallel_function_calls

pytestmark = [pytest.mark.feature("cancellation"), pytest.mark.needs_flags, pytest.mark.profile("refserver")]

LONG = {"prompt": "Once upon a time", "n_predict": -1, "ignore_eos": True}


@pytest.fixture(scope="module")
def long_server(server_pool):
    def make():
        server = ServerPreset.one_slot()
        # endless requests (no -n, context shift): each runs until its client leaves
        server.n_ctx, server.n_predict, server.context_shift = 2048, -1, True
        return server
    return server_pool("long", make)


def assert_serves_again(server):
    body = server.ok("/completion", {"prompt": "Hello", "n_predict": 2})
    assert body["tokens_predicted"] >= 1


@pytest.mark.parametrize("path,data", [
    ("/completion", LONG),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me a story."}], "ignore_eos": True}),
], ids=["native", "chat"])
def test_stream_cancel_frees_slot(long_server, path, data):
    stream = long_server.make_stream_request("POST", path, {**data, "stream": True})
    it = iter(stream)
    for _ in range(3):
        next(it)
    assert long_server.slots()[0]["is_processing"]
    stream.close()
    assert long_server.wait_slots_idle(1.0), "slot still busy 1 s after the client left"
    assert_serves_again(long_server)


def test_non_stream_cancel_frees_slot(long_server):
    """The client gives up after 0.1 s (llama.cpp's cancel_request)."""
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{long_server.url}/completion", json=LONG, timeout=(5, 0.1))
    time.sleep(0.3)  # the request may still be arriving at its slot
    assert long_server.wait_slots_idle(1.0), "slot still busy 1 s after the client left"
    assert_serves_again(long_server)


def test_cancel_while_queued(long_server):
    first = long_server.make_stream_request("POST", "/completion", {**LONG, "stream": True})
    next(iter(first))
    queued_done = threading.Event()

    def queued():
        try:
            requests.post(f"{long_server.url}/completion", json=LONG, timeout=(5, 0.5))
        except requests.exceptions.ReadTimeout:
            pass
        queued_done.set()

    threading.Thread(target=queued, daemon=True).start()
    assert queued_done.wait(10)
    first.close()
    assert long_server.wait_slots_idle(1.0), "the abandoned queued request ran anyway"
    time.sleep(0.5)
    assert long_server.wait_slots_idle(0.1)
    assert_serves_again(long_server)


def test_disconnect_storm():
    """40 concurrent streams, half abandoned: the other 20 complete intact, all slots idle 2 s later."""
    server = ServerPreset.chat()
    server.n_slots, server.n_ctx, server.n_predict = 4, 1024, 16
    server.start()
    data = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 16,
            "ignore_eos": True, "stream": True}

    def complete():
        stream = server.make_stream_request("POST", "/v1/chat/completions", data, timeout=300)
        events = stream.read_all()
        return stream.done and events[-1]["choices"][0]["finish_reason"] == "length"

    def abandon():
        stream = server.make_stream_request("POST", "/v1/chat/completions", data, timeout=300)
        next(iter(stream))
        stream.close()
        return True

    results = parallel_function_calls([(complete if i % 2 else abandon, ()) for i in range(40)], max_workers=40)
    assert all(results)
    time.sleep(2)
    assert server.wait_slots_idle(0.1)
    assert server.ok("/completion", {"prompt": "Hi", "n_predict": 2})["tokens_predicted"] >= 1
