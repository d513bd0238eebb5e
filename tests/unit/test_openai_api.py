"""OpenAI's documented response shapes, checked with nothing but OpenAI's API: the model id comes
from /v1/models, token counts from `usage`, no llama.cpp field is sent.  These are the first tests
to pass for any OpenAI-compatible server (platform.openai.com/docs/api-reference: chat/create,
chat/object, chat-streaming, completions/create, completions/object, models/list)."""

from __future__ import annotations

import pytest

chat = pytest.mark.feature("chat")
completion = pytest.mark.feature("completion")
streaming = pytest.mark.feature("streaming")
pytestmark = pytest.mark.profile("openai")

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a story about a cat."}]
CHAT_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def check_usage(usage: dict, max_tokens: int, finish_reason: str) -> None:
    assert isinstance(usage["prompt_tokens"], int) and usage["prompt_tokens"] > 0, usage
    assert isinstance(usage["completion_tokens"], int) and 0 <= usage["completion_tokens"] <= max_tokens, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    if finish_reason == "length":
        assert usage["completion_tokens"] == max_tokens, usage


@chat
@pytest.mark.parametrize("parts", [False, True], ids=["string", "parts"])
def test_chat_completion_object(chat_server, parts):
    """The chat completion object: id, object "chat.completion", created, model, choices with an
    assistant message and a documented finish_reason, usage whose total is prompt + completion and
    whose completion_tokens respect max_tokens ("length" exactly at the limit)."""
    msgs = [dict(m) for m in MESSAGES]
    if parts:
        msgs[1]["content"] = [{"type": "text", "text": msgs[1]["content"]}]
    body = chat_server.ok("/v1/chat/completions", {"model": chat_server.model_id(), "messages": msgs,
                                                   "max_tokens": 8})
    assert isinstance(body["id"], str) and body["id"]
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert isinstance(body["model"], str)
    assert body.get("system_fingerprint") is None or isinstance(body["system_fingerprint"], str)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in CHAT_FINISH
    check_usage(body["usage"], 8, choice["finish_reason"])


@chat
def test_chat_n_choices(chat_server):
    """`n`: how many choices to generate; they come with indexes 0..n-1."""
    body = chat_server.ok("/v1/chat/completions", {"model": chat_server.model_id(), "messages": MESSAGES,
                                                   "n": 2, "max_tokens": 4})
    assert sorted(c["index"] for c in body["choices"]) == [0, 1]
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in CHAT_FINISH


@streaming
def test_chat_stream_chunks_and_usage(chat_server):
    """Streamed chunks: object "chat.completion.chunk", one id, a delta per choice, one
    finish_reason; with stream_options.include_usage a last chunk before [DONE] has empty choices
    and the usage, the same as the request gets without streaming."""
    data = {"model": chat_server.model_id(), "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    stream = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        **data, "stream": True, "stream_options": {"include_usage": True}})
    events = stream.read_all()
    assert stream.done, "no data: [DONE]"
    assert {ev["object"] for ev in events} == {"chat.completion.chunk"}
    assert len({ev["id"] for ev in events}) == 1
    *chunks, last = events
    assert last["choices"] == [] and last["usage"], last
    assert all(ev.get("usage") is None for ev in chunks), "usage before the last chunk"
    finishes = [c["finish_reason"] for ev in chunks for c in ev["choices"] if c.get("finish_reason")]
    assert len(finishes) == 1 and finishes[0] in CHAT_FINISH, finishes
    text = "".join(c["delta"].get("content") or "" for ev in chunks for c in ev["choices"])
    plain = chat_server.ok("/v1/chat/completions", data)
    assert text == plain["choices"][0]["message"]["content"]
    assert last["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert last["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    check_usage(last["usage"], 8, finishes[0])


@streaming
def test_chat_stream_without_include_usage(chat_server):
    """Without stream_options.include_usage no chunk carries a usage object."""
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "model": chat_server.model_id(), "messages": MESSAGES, "max_tokens": 4, "stream": True}).read_all()
    assert events
    assert all(ev["choices"] and not ev.get("usage") for ev in events), events[-1]


@completion
def test_completion_object(chat_server):
    """The completion object: id, object "text_completion", created, model, choices with text,
    index and a documented finish_reason, usage consistent with max_tokens."""
    body = chat_server.ok("/v1/completions", {"model": chat_server.model_id(), "prompt": "Once upon a time",
                                              "max_tokens": 8})
    assert isinstance(body["id"], str) and body["id"]
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert isinstance(body["model"], str)
    [choice] = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    assert choice["finish_reason"] in {"stop", "length", "content_filter"}
    check_usage(body["usage"], 8, choice["finish_reason"])


@streaming
def test_completion_stream_equals_non_stream(chat_server):
    """A streamed completion (text_completion chunks, [DONE] at the end) carries the same text
    as the same request without streaming, at temperature 0."""
    data = {"model": chat_server.model_id(), "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    stream = chat_server.make_stream_request("POST", "/v1/completions", {**data, "stream": True})
    events = stream.read_all()
    assert stream.done, "no data: [DONE]"
    assert {ev["object"] for ev in events} == {"text_completion"}
    text = "".join(c.get("text") or "" for ev in events for c in ev["choices"])
    assert text == chat_server.ok("/v1/completions", data)["choices"][0]["text"]


@chat
def test_stop_sequence_not_returned(chat_server):
    """`stop`: generation stops at the sequence, and the returned text does not contain it."""
    data = {"model": chat_server.model_id(), "messages": MESSAGES, "max_tokens": 24, "temperature": 0}
    base = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    if len(base.strip()) < 8:
        pytest.skip(f"answer too short to cut: {base!r}")
    stop = base[4:7]
    body = chat_server.ok("/v1/chat/completions", {**data, "stop": [stop]})
    content = body["choices"][0]["message"]["content"]
    assert stop not in content
    assert content == base[:base.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


@completion
def test_completion_logprobs_shape(chat_server):
    """/v1/completions `logprobs: N`: choices[].logprobs has tokens, token_logprobs, top_logprobs
    (at most N alternatives each) and text_offset, one entry per generated token."""
    body = chat_server.ok("/v1/completions", {"model": chat_server.model_id(), "prompt": "Once upon a time",
                                              "max_tokens": 5, "temperature": 0, "logprobs": 2})
    lp = body["choices"][0]["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert all(isinstance(t, str) for t in lp["tokens"])
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert all(isinstance(top, dict) and len(top) <= 2 + 1 for top in lp["top_logprobs"])
