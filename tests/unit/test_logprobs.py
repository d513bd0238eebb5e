"""Token probabilities: llama.cpp's completion_probabilities on /completion, OpenAI's
logprobs on /v1/* (streamed too); sorted, the sampled token always reported."""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.feature("logprobs"), pytest.mark.profile("openai")]

STORY = "Once upon a time, there was a little cat named Tom."
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def check_entry(entry: dict, n_top: int, key: str = "logprob", top_key: str = "top_logprobs"):
    assert isinstance(entry["id"], int)
    assert isinstance(entry["token"], str)
    assert isinstance(entry["bytes"], list) and all(isinstance(b, int) for b in entry["bytes"])
    assert entry[key] <= 0 if key == "logprob" else 0 < entry[key] <= 1
    top = entry[top_key]
    assert 0 < len(top) <= n_top
    values = [t[key] for t in top]
    assert values == sorted(values, reverse=True), "top entries not sorted"
    for t in top:
        assert isinstance(t["id"], int) and isinstance(t["token"], str) and isinstance(t["bytes"], list)


@pytest.mark.profile("llamacpp")
def test_n_probs(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_probs": 10, "temperature": 0, "n_predict": 5,
                                          "ignore_eos": True})
    probs = body["completion_probabilities"]
    assert len(probs) == 5
    for entry in probs:
        check_entry(entry, 10)
        assert len(entry["top_logprobs"]) == 10
        assert entry["top_logprobs"][0]["id"] == entry["id"], "greedy token is not the most likely"
        try:
            assert bytes(entry["bytes"]).decode("utf-8") == entry["token"]
        except UnicodeDecodeError:  # part of a character: the text cannot match the bytes
            pass


@pytest.mark.profile("llamacpp")
def test_n_probs_stream(chat_server):
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": STORY, "n_probs": 10, "temperature": 0, "n_predict": 5, "ignore_eos": True,
        "stream": True}).read_all()
    n = 0
    for ev in events:
        if ev["stop"]:
            continue
        assert len(ev["completion_probabilities"]) == 1
        check_entry(ev["completion_probabilities"][0], 10)
        n += 1
    assert n == 5


@pytest.mark.profile("llamacpp")
def test_n_probs_post_sampling(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_probs": 10, "temperature": 0, "n_predict": 5,
                                          "ignore_eos": True, "post_sampling_probs": True})
    for entry in body["completion_probabilities"]:
        check_entry(entry, 10, key="prob", top_key="top_probs")
        assert "logprob" not in entry
        assert all(0 <= t["prob"] <= 1 for t in entry["top_probs"])
        assert any(t["prob"] >= 0.99 for t in entry["top_probs"])


@pytest.mark.profile("llamacpp")
def test_sampled_token_reported_outside_top(chat_server):
    """At a high temperature with top_k off, the sampled token is often outside the top 1,
    and its own logprob is still reported."""
    body = chat_server.ok("/completion", {"prompt": STORY, "n_probs": 1, "temperature": 3.0, "top_k": 0,
                                          "top_p": 1.0, "min_p": 0.0, "seed": 7, "n_predict": 24, "ignore_eos": True})
    outside = [e for e in body["completion_probabilities"] if e["id"] != e["top_logprobs"][0]["id"]]
    assert outside, "every sampled token was the most likely one at temperature 3"
    for e in outside:
        assert e["logprob"] <= e["top_logprobs"][0]["logprob"]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs(chat_server, stream):
    """`logprobs: true` with `top_logprobs`: one entry per generated token with token, logprob,
    bytes and top_logprobs; the entries' bytes combine into the message content."""
    data = {"messages": CHAT, "max_tokens": 10, "temperature": 0, "logprobs": True, "top_logprobs": 10,
            "stream": stream}
    body = chat_server.make_any_request("POST", "/v1/chat/completions", data)
    choice = body["choices"][0]
    content = choice["message"]["content"] or ""
    entries = choice["logprobs"]["content"]
    assert entries
    for e in entries:
        assert e["logprob"] <= 0
        assert "bytes" in e and (e["bytes"] is None or isinstance(e["bytes"], list)), e
    # OpenAI: combine the entries' bytes (null: no byte form, then the token) to get the text; bytes
    # that are no UTF-8 (random weights) decode to U+FFFD, which servers place differently
    text = b"".join(bytes(e["bytes"]) if e["bytes"] is not None else e["token"].encode() for e in entries)
    text = text.decode("utf-8", "replace")
    assert text.replace("\ufffd", "") == content.replace("\ufffd", "")
    for e in entries:
        assert e["top_logprobs"]
        assert all(t["logprob"] <= 0 and "token" in t for t in e["top_logprobs"])


def test_chat_stream_logprobs_on_every_content_chunk(chat_server):
    """Streamed with `logprobs: true`, every chunk that carries content carries its logprobs."""
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": CHAT, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
        "stream": True}).read_all()
    for ev in events:
        for ch in ev["choices"]:
            if ch["delta"].get("content"):
                assert (ch.get("logprobs") or {}).get("content"), ev


def test_chat_logprobs_default_top(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3, "logprobs": True})
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    for e in entries:
        assert math.isfinite(e["logprob"])


def test_chat_without_logprobs_has_none(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3})
    assert body["choices"][0].get("logprobs") is None


@pytest.mark.profile("llamacpp")
def test_v1_completions_logprobs(chat_server):
    body = chat_server.ok("/v1/completions", {"prompt": STORY, "max_tokens": 5, "temperature": 0, "logprobs": 3,
                                              "ignore_eos": True})
    lp = body["choices"][0]["logprobs"]
    assert lp is not None
    entries = lp["content"]
    assert len(entries) == 5
    assert "".join(e["token"] for e in entries) == body["choices"][0]["text"]
