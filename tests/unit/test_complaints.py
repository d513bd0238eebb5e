"""CONTRACT §9: what users of other servers complain about, each as a test."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from utils import WEATHER_TOOL, ServerError, ServerPreset, client_error_status_ok, error_of

pytestmark = [pytest.mark.feature("complaints"), pytest.mark.profile("openai")]

STORY = "Once upon a time, there was a little cat named Tom."
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def one_slot(server_pool):
    def make():
        server = ServerPreset.one_slot()
        server.n_ctx, server.n_predict, server.keepalive, server.context_shift = 2048, -1, 1, True
        return server
    return server_pool("one-slot", make)


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_01_disconnect_stops_generation(one_slot):
    """A non-streaming client that disconnects frees its slot: generation does not run on."""
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{one_slot.url}/v1/chat/completions", json={
            "messages": CHAT, "ignore_eos": True}, timeout=(5, 0.5))  # endless on this server
    time.sleep(0.2)
    assert one_slot.wait_slots_idle(1.0), "generation kept running after the client left"


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_02_waiting_stream_gets_keepalives(one_slot):
    """A stream that waits (queue or prefill) receives comment lines, so clients never time out."""
    busy = one_slot.hold_slot()
    timer = threading.Timer(3.0, busy.close)
    timer.start()
    try:
        stream = one_slot.make_stream_request("POST", "/v1/chat/completions", {
            "messages": CHAT, "max_tokens": 2, "stream": True}, timeout=10)
        events = stream.read_all()
    finally:
        timer.cancel()
        busy.close()
    assert events
    first_data = next(t for kind, _, t in stream.items if kind == "data")
    assert [c for c in stream.comments if c.t < first_data], "no comment before the first token"


# 3 ------------------------------------------------------------------------------------------
def _boundary_stop(server, tokens: list[int], content: str) -> tuple[str, int] | None:
    """A 2-character stop string whose characters come from two different tokens, and
    where it first occurs in `content`."""
    ends = []  # ends[j]: length of the text of tokens[:j + 1]
    for k in range(1, len(tokens) + 1):
        text = server.ok("/detokenize", {"tokens": tokens[:k]})["content"]
        if not content.startswith(text):
            return None
        ends.append(len(text))
    return _stop_across(ends, content)


def _stop_across(ends: list[int], content: str) -> tuple[str, int] | None:
    """The stop string of `_boundary_stop`, given where each token's text ends in `content`."""
    for j in range(len(ends) - 1):
        start = ends[j - 1] if j else 0
        b = ends[j]
        if b - start < 1 or ends[j + 1] - b < 1:
            continue
        stop = content[b - 1:b + 1]
        if stop.strip() and content.find(stop) == b - 1:
            return stop, b - 1
    return None


@pytest.mark.parametrize("path", ["/completion", "/v1/completions"])
@pytest.mark.profile("llamacpp")  # finds the token boundaries with /completion and /detokenize
def test_03_stop_string_split_over_tokens_never_leaks(chat_server, path):
    base = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 32, "temperature": 0, "ignore_eos": True,
                                          "return_tokens": True})
    found = _boundary_stop(chat_server, base["tokens"], base["content"])
    if found is None:
        pytest.skip(f"no stop string across a token boundary in {base['content']!r}")
    stop, at = found
    data = {"prompt": STORY, "temperature": 0, "stop": [stop], "stream": True}
    data.update({"n_predict": 32} if path == "/completion" else {"max_tokens": 32})
    events = chat_server.make_stream_request("POST", path, data).read_all()
    if path == "/completion":
        pieces = [ev["content"] for ev in events]
        assert events[-1]["stop_type"] == "word"
    else:
        pieces = [ev["choices"][0]["text"] for ev in events if ev["choices"]]
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(pieces) == base["content"][:at], f"stop {stop!r} leaked: {pieces}"


def test_03_stop_string_split_over_tokens_never_leaks_openai(chat_server):
    """A stop string whose characters come from two tokens ends a streamed /v1/completions
    before it, and no part of it is streamed; the token boundaries come from `logprobs`."""
    data = {"model": chat_server.model_id(), "prompt": STORY, "max_tokens": 32, "temperature": 0}
    base = chat_server.ok("/v1/completions", {**data, "logprobs": 1})["choices"][0]
    tokens, content = base["logprobs"]["tokens"], base["text"]
    if "".join(tokens) != content:
        pytest.skip("the tokens' texts do not spell the completion (partial UTF-8 characters)")
    found = _stop_across([sum(len(t) for t in tokens[:j + 1]) for j in range(len(tokens))], content)
    if found is None:
        pytest.skip(f"no stop string across a token boundary in {content!r}")
    stop, at = found
    events = chat_server.make_stream_request("POST", "/v1/completions", {
        **data, "stop": [stop], "stream": True}).read_all()
    pieces = [ch["text"] for ev in events for ch in ev["choices"]]
    assert [ch["finish_reason"] for ev in events for ch in ev["choices"] if ch["finish_reason"]] == ["stop"]
    assert "".join(pieces) == content[:at], f"stop {stop!r} leaked: {pieces}"


# 4 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["🦙🪿", "naïve café ☕"])
@pytest.mark.profile("llamacpp")
def test_04_utf8_split_over_tokens_never_garbled(chat_server, text):
    grammar = f'root ::= "{text}"'
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": "Say it: ", "n_predict": 48, "grammar": grammar, "stream": True}).read_all()
    for ev in events:
        assert "\ufffd" not in ev["content"], f"U+FFFD in a chunk: {ev['content']!r}"
    assert "".join(ev["content"] for ev in events) == text
    n_tokens = sum(len(ev["tokens"]) for ev in events if not ev["stop"])
    assert n_tokens >= 1


@pytest.mark.profile("llamacpp")
def test_04_utf8_split_in_chat_stream(chat_server):
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": CHAT, "max_tokens": 48, "grammar": 'root ::= "🦙 and 🪿"', "stream": True}).read_all()
    deltas = [ch["delta"].get("content") or "" for ev in events for ch in ev["choices"]]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "🦙 and 🪿"


# 5 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,data", [
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 5}),
    ("/v1/completions", {"prompt": STORY, "max_tokens": 5}),
], ids=["chat", "completions"])
def test_05_streams_carry_usage(chat_server, path, data):
    """With `stream_options.include_usage` a stream carries the usage the same request
    gets without streaming."""
    data = {**data, "model": chat_server.model_id(), "temperature": 0}
    plain = chat_server.ok(path, data)["usage"]
    stream = chat_server.make_stream_request("POST", path, {
        **data, "stream": True, "stream_options": {"include_usage": True}})
    events = stream.read_all()
    usage = [ev["usage"] for ev in events if ev.get("usage")]
    assert usage, "no usage in the stream"
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[-1][key] == plain[key], (key, usage[-1], plain)
    assert 0 < usage[-1]["completion_tokens"] <= 5
    assert usage[-1]["total_tokens"] == usage[-1]["prompt_tokens"] + usage[-1]["completion_tokens"]
    assert stream.done


# 6 ------------------------------------------------------------------------------------------
def test_06_streamed_tool_calls_equal_non_streamed(chat_server):
    data = {"messages": WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "required", "temperature": 0,
            "max_tokens": 64}
    plain = chat_server.make_any_request("POST", "/v1/chat/completions", data)
    if plain["choices"][0]["finish_reason"] == "length":
        pytest.skip("the forced call did not finish within max_tokens on this model")
    streamed = chat_server.make_any_request("POST", "/v1/chat/completions", {**data, "stream": True})
    a, b = plain["choices"][0], streamed["choices"][0]
    assert [c["function"]["name"] for c in a["message"]["tool_calls"]] == \
        [c["function"]["name"] for c in b["message"]["tool_calls"]]
    assert [json.loads(c["function"]["arguments"]) for c in a["message"]["tool_calls"]] == \
        [json.loads(c["function"]["arguments"]) for c in b["message"]["tool_calls"]]
    assert a["finish_reason"] == b["finish_reason"] == "tool_calls"
    for choice in (a, b):
        assert "<tool_call>" not in (choice["message"].get("content") or "")


# 7 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.profile("refserver")  # OpenAI documents no tool-call markup; hiding a cut call's is refserver's choice
def test_07_truncated_tool_call_finishes_with_length(chat_server, stream):
    body = chat_server.make_any_request("POST", "/v1/chat/completions", {
        "messages": WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "required", "temperature": 0,
        "max_tokens": 4, "stream": stream})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "<tool_call>" not in (choice["message"].get("content") or "")


# 8 ------------------------------------------------------------------------------------------
@pytest.mark.golden
@pytest.mark.profile("refserver")
def test_08_several_tool_calls_are_all_parsed(chat_server):
    res = chat_server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the weather in Paris, and also for London."}],
        "tools": [WEATHER_TOOL], "parallel_tool_calls": True, "temperature": 0, "max_tokens": 96})
    assert res.status_code == 200, res.body
    calls = res.body["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "London"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.profile("llamacpp")
def test_08_several_tool_calls_in_history_are_accepted(chat_server):
    calls = [{"id": f"call_{i}", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
             for i, city in enumerate(["Paris", "London"])]
    msgs = [{"role": "user", "content": "Weather in Paris and London?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]
    prompt = chat_server.ok("/apply-template", {"messages": msgs, "tools": [WEATHER_TOOL]})["prompt"]
    assert "Paris" in prompt and "London" in prompt


# 9 ------------------------------------------------------------------------------------------
@pytest.mark.needs_flags
@pytest.mark.parametrize("template", ["llama2", "zephyr"])
@pytest.mark.profile("llamacpp")  # --chat-template names and `__verbose` are llama-server's
def test_09_tools_never_silently_dropped(server_pool, template):
    def make():
        server = ServerPreset.one_slot()
        server.jinja = False  # built-in template names belong to the non-Jinja engine
        server.chat_template = template
        server.verbose = True
        return server

    server = server_pool(f"tpl-{template}", make)
    res = server.post("/v1/chat/completions", {"messages": WEATHER, "tools": [WEATHER_TOOL], "max_tokens": 2})
    if res.status_code == 200:
        assert "get_weather" in res.body["__verbose"]["prompt"], "tools dropped from the prompt"
    else:
        assert client_error_status_ok(res.status_code)  # an error, never a silent drop
        error_of(res)


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.profile("llamacpp")
def test_10_cache_trimmed_to_common_prefix(chat_server):
    head = STORY + " Tom liked milk, fish and long naps in the warm sun by the kitchen window."
    first = chat_server.ok("/completion", {"prompt": head + " One day", "n_predict": 2, "id_slot": 0})
    n_head = len(chat_server.tokenize(head, add_special=True))
    second = chat_server.ok("/completion", {"prompt": head + " Every night", "n_predict": 2, "id_slot": 0})
    assert first["timings"]["prompt_n"] > 0
    assert second["timings"]["cache_n"] >= n_head - 1, "cache thrown away on a diverging suffix"


@pytest.mark.profile("llamacpp")
def test_10_cached_tokens_in_usage(chat_server):
    msgs = [{"role": "system", "content": "You are a helpful assistant who answers in one sentence."}] + CHAT
    chat_server.ok("/v1/chat/completions", {"messages": msgs, "max_tokens": 2})
    body = chat_server.ok("/v1/chat/completions", {"messages": msgs, "max_tokens": 2})
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


# 11 -----------------------------------------------------------------------------------------
@pytest.mark.needs_flags
@pytest.mark.parametrize("field", ["guided_json", "structured_outputs_typo"])
@pytest.mark.profile("refserver")  # --strict is refserver's flag
def test_11_strict_rejects_unknown_fields(server_pool, field):
    def make():
        server = ServerPreset.one_slot()
        server.strict = True
        return server

    server = server_pool("strict", make)
    res = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, field: {"type": "object"}})
    assert res.status_code == 400
    assert field in error_of(res)["message"]
    assert server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2}).status_code == 200


def test_11_invalid_schema_fails_closed(chat_server):
    res = chat_server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": 7}}}})
    assert res.status_code == 400
    error_of(res)


def test_11_constraint_is_applied(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": CHAT, "max_tokens": 16, "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "boolean"}}}})
    assert json.loads(body["choices"][0]["message"]["content"]) in (True, False)


# 12 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/completion", "/v1/completions"])
@pytest.mark.profile("llamacpp")
def test_12_no_silent_prompt_truncation(chat_server, path):
    slot_ctx = chat_server.props()["default_generation_settings"]["n_ctx"]
    res = chat_server.post(path, {"prompt": "The cat sat on the mat. " * slot_ctx, "max_tokens": 2, "n_predict": 2})
    assert res.status_code == 400
    err = error_of(res)
    assert err["type"] == "exceed_context_size_error"
    assert err["n_prompt_tokens"] > err["n_ctx"] == slot_ctx


@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_12_context_full_is_reported(server_pool):
    def make():
        server = ServerPreset.one_slot()
        server.n_ctx, server.n_predict = 128, 1000
        return server

    server = server_pool("tiny-ctx", make)
    body = server.ok("/completion", {"prompt": STORY, "n_predict": -1, "ignore_eos": True})
    # the context the server reports (llama.cpp rounds -c 128 up to 256)
    n_ctx = server.props()["default_generation_settings"]["n_ctx"]
    assert 128 <= n_ctx < 1000
    # llama.cpp stops when prompt + generated tokens reach the slot's context
    assert body["tokens_evaluated"] + body["tokens_predicted"] == n_ctx
    assert body["truncated"] is True


# 13 -----------------------------------------------------------------------------------------
def test_13_logprobs_in_openai_shape(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, "logprobs": True,
                                                   "top_logprobs": 2})
    entries = body["choices"][0]["logprobs"]["content"]
    assert entries
    for e in entries:
        assert {"token", "logprob", "bytes", "top_logprobs"} <= set(e)
        assert isinstance(e["token"], str)
        for t in e["top_logprobs"]:
            assert {"token", "logprob", "bytes"} <= set(t)


# 14 -----------------------------------------------------------------------------------------
def test_14_responses_api_answers_cleanly(chat_server):
    res = chat_server.post("/v1/responses", {"model": chat_server.model_id(), "input": "Hello",
                                             "max_output_tokens": 16})
    if res.status_code == 200:
        assert res.body.get("object") == "response"
    else:
        assert res.status_code in (404, 501)
        error_of(res)


def test_errors_are_never_html(chat_server):
    for path in ("/nope", "/v1/nope", "/v1/models/nope/extra"):
        res = chat_server.get(path)
        assert "html" not in res.headers.get("Content-Type", "")
    with pytest.raises(ServerError) as exc:
        chat_server.make_stream_request("POST", "/v1/chat/completions", {"messages": "bad", "stream": True})
    assert exc.value.status_code == 400
