"""Stream ≡ non-stream: the same request streamed and not gives the same text, tool calls,
finish reasons, usage, and one logprob entry per generated token (EOS and tool-call
tokens included) -- on chat (text, a tool call, several tool calls, n=2), /v1/completions
and native /completion, at temperature 0 and seeded."""

from __future__ import annotations

import json

import pytest
from utils import TIME_TOOL, WEATHER_TOOL

# refserver's contract: one logprob entry per generated token, EOS and tool-call markup included,
# and forced calls that finish on its model; the OpenAI-only equivalence is in test_openai_api.py
pytestmark = [pytest.mark.feature("streaming"), pytest.mark.profile("refserver")]

SYSTEM = "You are a helpful assistant."


def chat_messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def both(server, path: str, data: dict) -> tuple[dict, dict]:
    plain = server.make_any_request("POST", path, {**data, "stream": False})
    streamed = server.make_any_request("POST", path, {**data, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    return plain, streamed


def calls_of(choice: dict) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"].get("tool_calls") or []]


def assert_same_chat(plain: dict, streamed: dict) -> None:
    assert len(plain["choices"]) == len(streamed["choices"])
    for a, b in zip(plain["choices"], streamed["choices"]):
        assert a["index"] == b["index"]
        assert (a["message"].get("content") or "").strip() == (b["message"].get("content") or "").strip()
        assert calls_of(a) == calls_of(b)
        assert a["finish_reason"] == b["finish_reason"]
        la, lb = a["logprobs"]["content"], b["logprobs"]["content"]
        assert [e["token"] for e in la] == [e["token"] for e in lb]
        assert [e["logprob"] for e in la] == pytest.approx([e["logprob"] for e in lb], abs=1e-5)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert plain["usage"][key] == streamed["usage"][key], key
    n_entries = sum(len(c["logprobs"]["content"]) for c in plain["choices"])
    assert n_entries == plain["usage"]["completion_tokens"], "one logprob entry per generated token"


LOGPROBS = {"temperature": 0, "logprobs": True, "top_logprobs": 2}


def test_chat_text(chat_server):
    plain, streamed = both(chat_server, "/v1/chat/completions", {
        "messages": chat_messages("What is the capital of France?"), "max_tokens": 48, **LOGPROBS})
    assert_same_chat(plain, streamed)
    assert plain["choices"][0]["message"]["content"]


def test_chat_text_ending_in_eos(chat_server):
    """The EOS token has a logprob entry in both modes (a reply that stops by itself)."""
    plain, streamed = both(chat_server, "/v1/chat/completions", {
        "messages": chat_messages("Say hi."), "max_tokens": 200, **LOGPROBS})
    assert plain["choices"][0]["finish_reason"] == "stop", "the model should stop by itself here"
    assert_same_chat(plain, streamed)


@pytest.mark.parametrize("max_tokens", [64, 4])
def test_chat_tool_call(chat_server, max_tokens):
    """A forced call (its markup tokens have entries too), and one cut off by max_tokens."""
    plain, streamed = both(chat_server, "/v1/chat/completions", {
        "messages": chat_messages("What is the weather in Paris?"), "tools": [WEATHER_TOOL],
        "tool_choice": "required", "max_tokens": max_tokens, **LOGPROBS})
    assert_same_chat(plain, streamed)
    if max_tokens == 64:
        assert calls_of(plain["choices"][0]), plain
        assert plain["choices"][0]["finish_reason"] == "tool_calls"
    else:
        assert plain["choices"][0]["finish_reason"] == "length"


def test_chat_parallel_tool_calls(chat_server):
    plain, streamed = both(chat_server, "/v1/chat/completions", {
        "messages": chat_messages("What is the weather in Paris and the time in Tokyo?"),
        "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required", "parallel_tool_calls": True,
        "max_tokens": 160, **LOGPROBS})
    assert_same_chat(plain, streamed)
    assert calls_of(plain["choices"][0]), plain


def test_chat_n2_seeded(chat_server):
    chat_server.require_slots(2)
    plain, streamed = both(chat_server, "/v1/chat/completions", {
        "messages": chat_messages("Tell me a story."), "max_tokens": 24, "n": 2, "seed": 7,
        "temperature": 0.9, "logprobs": True, "top_logprobs": 1})
    assert [c["index"] for c in streamed["choices"]] == [0, 1]
    assert_same_chat(plain, streamed)


def completions_stream(server, data: dict) -> dict:
    """/v1/completions streamed, assembled: text, finish_reason and logprob tokens per index."""
    out: dict = {"choices": {}, "usage": None}
    for chunk in server.make_stream_request("POST", "/v1/completions", {**data, "stream": True,
                                                                       "stream_options": {"include_usage": True}}):
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        for ch in chunk["choices"]:
            c = out["choices"].setdefault(ch["index"], {"text": "", "finish_reason": None, "tokens": []})
            c["text"] += ch["text"]
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
            if ch.get("logprobs"):
                c["tokens"] += ch["logprobs"]["tokens"]
    return out


def test_v1_completions(chat_server):
    data = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "logprobs": 2}
    plain = chat_server.ok("/v1/completions", data)
    streamed = completions_stream(chat_server, data)
    a, b = plain["choices"][0], streamed["choices"][0]
    assert a["text"] == b["text"] and a["text"]
    assert a["finish_reason"] == b["finish_reason"]
    assert a["logprobs"]["tokens"] == b["tokens"]
    assert len(a["logprobs"]["tokens"]) == plain["usage"]["completion_tokens"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert plain["usage"][key] == streamed["usage"][key]


@pytest.mark.profile("llamacpp")
def test_native_completion(chat_server):
    data = {"prompt": "Once upon a time", "n_predict": 40, "temperature": 0, "n_probs": 2}
    plain = chat_server.ok("/completion", data)
    chunks = list(chat_server.make_stream_request("POST", "/completion", {**data, "stream": True}))
    final = chunks[-1]
    assert final["stop"] is True
    text = "".join(c["content"] for c in chunks)
    assert text == plain["content"] and text
    for key in ("stop_type", "tokens_predicted", "tokens_evaluated", "truncated"):
        assert plain[key] == final[key], key
    streamed_probs = [p["id"] for c in chunks[:-1] for p in c.get("completion_probabilities", [])]
    assert streamed_probs == [p["id"] for p in plain["completion_probabilities"]]
    assert len(streamed_probs) == plain["tokens_predicted"]
