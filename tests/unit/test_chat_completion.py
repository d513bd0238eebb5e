"""/v1/chat/completions (llama.cpp test_chat_completion.py, CONTRACT §3): responses,
streams, templates, structured output, tools, validation."""

from __future__ import annotations

import json

import pytest
from utils import (
    TIME_TOOL,
    WEATHER_TOOL,
    ServerError,
    ServerPreset,
    client_error_status_ok,
    error_of,
    match_regex,
)

chat = pytest.mark.feature("chat")
streaming = pytest.mark.feature("streaming")
templates = pytest.mark.feature("templates")
structured = pytest.mark.feature("structured_output")
tools = pytest.mark.feature("tools")
sampling = pytest.mark.feature("sampling")
pytestmark = pytest.mark.profile("openai")

SYSTEM = "You are a helpful assistant."
CAPITAL = "What is the capital of France?"
SUM = "What is 3 + 4?"
WEATHER = "What is the weather in Paris?"


def messages(user: str = CAPITAL, system: str | None = SYSTEM) -> list[dict]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}]


def prompt_tokens(server, data: dict) -> int:
    """Tokens of the rendered prompt, with BOS when the server adds it."""
    rendered = server.ok("/apply-template", data)["prompt"]
    ids = server.tokenize(rendered, add_special=False, parse_special=True)
    bos = server.tokenize("", add_special=True)
    return len(ids) + (1 if bos and ids[:1] != bos else 0)


def without_bos(server, text: str) -> str:
    bos = server.props().get("bos_token") or ""
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return text.lstrip(" ")


# --------------------------------------------------------------------------- responses
@chat
@pytest.mark.parametrize("parts", [False, True], ids=["string", "parts"])
@pytest.mark.parametrize("model", [None, pytest.param("gpt-3.5-turbo", marks=pytest.mark.profile("refserver"))])
@pytest.mark.profile("llamacpp")
def test_chat_completion(chat_server, parts, model):
    """llama.cpp's chat response: fingerprint `b<build>`, exact usage from /apply-template and
    /tokenize, `ignore_eos` reaching max_tokens; any model name is served (refserver's choice:
    OpenAI answers 404 for a model it lacks)."""
    msgs = messages()
    if parts:
        msgs[1]["content"] = [{"type": "text", "text": CAPITAL}]
    data = {"messages": msgs, "max_tokens": 8, "ignore_eos": True}
    if model:
        data["model"] = model
    body = chat_server.ok("/v1/chat/completions", data)
    assert "cmpl" in body["id"]
    assert body["object"] == "chat.completion"
    assert body["system_fingerprint"].startswith("b")
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == prompt_tokens(chat_server, {"messages": messages()})
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


@chat
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # llama-server answers with its --alias; OpenAI with the model used
def test_chat_model_is_alias(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"model": "gpt-4o", "messages": messages(), "max_tokens": 2})
    assert body["model"] == chat_server.alias


@chat
@pytest.mark.golden
@pytest.mark.parametrize("question,regex", [(CAPITAL, r"Paris"), (SUM, r"\b7\b"),
                                            ("What is the capital of Italy?", r"Rome")])
@pytest.mark.profile("refserver")
def test_chat_golden(chat_server, question, regex):
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(question), "temperature": 0,
                                                   "max_tokens": 32})
    content = body["choices"][0]["message"]["content"]
    assert match_regex(regex, content), content
    assert body["choices"][0]["finish_reason"] == "stop"


@chat
@pytest.mark.profile("llamacpp")
def test_chat_alias_path(chat_server):
    """/chat/completions (no /v1) is an alias of /v1/chat/completions (llama-server's route)."""
    data = {"messages": messages(), "max_tokens": 6, "temperature": 0}
    a = chat_server.ok("/chat/completions", data)["choices"][0]["message"]["content"]
    b = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    assert a == b


@chat
@pytest.mark.profile("llamacpp")
def test_text_parts_join_with_newline(chat_server):
    """Text parts within one message are joined with a newline."""
    joined = chat_server.ok("/apply-template", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]})
    plain = chat_server.ok("/apply-template", {"messages": [{"role": "user", "content": "Hello\nthere"}]})
    assert joined["prompt"] == plain["prompt"]


@chat
@pytest.mark.profile("llamacpp")
def test_multiple_choices(chat_server):
    chat_server.require_slots(2)
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(), "n": 2, "max_tokens": 6,
                                                   "ignore_eos": True})
    assert len(body["choices"]) == 2
    assert sorted(c["index"] for c in body["choices"]) == [0, 1]
    for c in body["choices"]:
        assert c["message"]["role"] == "assistant"
        assert c["message"]["content"]
        assert c["finish_reason"] == "length"


@chat
@pytest.mark.profile("llamacpp")
def test_n_over_slots_is_400(chat_server):
    """`n` above the server's slot count is a 400 (llama.cpp: n_cmpl <= --parallel; OpenAI allows up to 128)."""
    res = chat_server.post("/v1/chat/completions", {"messages": messages(), "n": 64, "max_tokens": 2})
    assert res.status_code == 400
    error_of(res)


@chat
@pytest.mark.profile("llamacpp")
def test_unknown_fields_are_ignored(chat_server):
    """Unknown request fields are ignored (llama.cpp's way; OpenAI rejects them)."""
    res = chat_server.post("/v1/chat/completions", {"messages": messages(), "max_tokens": 2,
                                                    "some_future_field": {"x": 1}})
    assert res.status_code == 200, res.body


@chat
def test_tool_history_is_accepted(chat_server):
    """An assistant message with null content and tool_calls, then a tool message."""
    msgs = messages(WEATHER) + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    body = chat_server.ok("/v1/chat/completions", {"messages": msgs, "tools": [WEATHER_TOOL], "max_tokens": 8})
    assert body["choices"][0]["message"]["role"] == "assistant"


@chat
@pytest.mark.parametrize("msgs", [
    None, "string", [123], [{}], [{"role": 123}], [{"role": "system", "content": 123}],
    [{"role": "system", "content": "test"}, {}],
    pytest.param([{"role": "user", "content": "test"}, {"role": "assistant", "content": "test"},
                  {"role": "assistant", "content": "test"}], marks=pytest.mark.profile("refserver")),
], ids=["none", "string", "int", "empty_obj", "int_role", "int_content", "second_empty", "two_assistants"])
def test_invalid_chat_completion_req(chat_server, msgs):
    """`messages` must be an array of message objects with a documented role and string or
    content-part content: anything else is a 400 with the error object (two trailing assistant
    messages: refserver's choice, OpenAI accepts them)."""
    res = chat_server.post("/v1/chat/completions", {"messages": msgs})
    assert res.status_code in (400, 500), res.body
    error_of(res)


@chat
@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                  {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                                  {"type": "video", "video": "x"}])
@pytest.mark.profile("refserver")
def test_unsupported_content_parts_are_400(chat_server, part):
    """A text-only model rejects image, audio and unknown content parts with a 400 (CONTRACT §0:
    no multimodal input) rather than dropping them."""
    res = chat_server.post("/v1/chat/completions", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, part]}], "max_tokens": 2})
    assert res.status_code == 400
    error_of(res)


@chat
def test_top_logprobs_without_logprobs_is_400(chat_server):
    """`top_logprobs`: "logprobs must be set to true if this parameter is used"; a request without
    it is a 400."""
    res = chat_server.post("/v1/chat/completions", {"messages": messages(), "top_logprobs": 3, "max_tokens": 2})
    assert res.status_code == 400
    error_of(res)


@chat
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.profile("llamacpp")
def test_context_size_exceeded(chat_server, stream):
    slot_ctx = chat_server.props()["default_generation_settings"]["n_ctx"]
    data = {"messages": messages("Tell me a story. " * slot_ctx), "max_tokens": 4, "stream": stream}
    if stream:
        with pytest.raises(ServerError) as exc:
            chat_server.make_stream_request("POST", "/v1/chat/completions", data)
        status, body = exc.value.status_code, exc.value.body
    else:
        res = chat_server.post("/v1/chat/completions", data)
        status, body = res.status_code, res.body
    assert status == 400
    err = body["error"]
    assert err["type"] == "exceed_context_size_error"
    assert err["n_prompt_tokens"] > slot_ctx
    assert err["n_ctx"] == slot_ctx
    assert "exceeds the available context size" in err["message"]


# --------------------------------------------------------------------------- streaming
@streaming
@pytest.mark.profile("llamacpp")
def test_chat_completion_stream(chat_server):
    data = {"messages": messages(), "max_tokens": 8, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    stream = chat_server.make_stream_request("POST", "/v1/chat/completions", data)
    events = stream.read_all()
    assert stream.done
    first = events[0]["choices"][0]
    assert first["delta"]["role"] == "assistant"
    assert first["delta"].get("content") is None
    assert "timings" not in events[0]
    ids = {ev["id"] for ev in events}
    assert len(ids) == 1 and "cmpl" in ids.pop()
    choice_events = [ev for ev in events if ev["choices"]]
    for ev in choice_events[1:]:
        assert "role" not in ev["choices"][0]["delta"]
        assert ev["object"] == "chat.completion.chunk"
    finish = [ev for ev in choice_events if ev["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    assert finish[0]["choices"][0]["finish_reason"] == "length"
    assert not finish[0]["choices"][0]["delta"].get("content")
    for ev in choice_events[1:]:
        if ev is not finish[0]:
            assert ev["choices"][0]["delta"].get("content") or ev["choices"][0]["delta"].get("tool_calls")
            assert ev["choices"][0]["finish_reason"] is None
    usage = events[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 8
    assert usage["usage"]["prompt_tokens"] == prompt_tokens(chat_server, {"messages": messages()})


@streaming
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_chat_stream_model_is_alias(chat_server):
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "model": "whatever", "messages": messages(), "max_tokens": 3, "stream": True}).read_all()
    assert {ev["model"] for ev in events} == {chat_server.alias}


@streaming
def test_chat_stream_equals_non_stream(chat_server):
    data = {"messages": messages(SUM), "max_tokens": 16, "temperature": 0}
    plain = chat_server.ok("/v1/chat/completions", data)
    assembled = chat_server.make_any_request("POST", "/v1/chat/completions", {**data, "stream": True})
    assert assembled["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    assert assembled["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


@streaming
def test_chat_stream_role_first_and_one_finish(chat_server):
    """Streamed chat: the first chunk's delta carries the role "assistant", later deltas no
    other role (OpenAI's chunk object does not forbid repeating it); exactly one chunk carries
    a finish_reason."""
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "model": chat_server.model_id(), "messages": messages(), "max_tokens": 8, "stream": True}).read_all()
    deltas = [ch for ev in events for ch in ev["choices"]]
    assert deltas[0]["delta"].get("role") == "assistant"
    assert all(ch["delta"].get("role") in (None, "assistant") for ch in deltas[1:]), deltas
    assert len([ch for ch in deltas if ch.get("finish_reason")]) == 1


@streaming
def test_chat_stream_without_include_usage_has_no_usage_chunk(chat_server):
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": messages(), "max_tokens": 3, "stream": True}).read_all()
    assert all(ev["choices"] for ev in events)


@streaming
@pytest.mark.profile("llamacpp")
def test_timings_per_token(chat_server):
    events = chat_server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": messages(), "max_tokens": 6, "stream": True, "timings_per_token": True,
        "stream_options": {"include_usage": True}}).read_all()
    assert "timings" not in events[0]
    later = [ev for ev in events[1:] if "timings" in ev]
    assert later, "no timings"
    for ev in later:
        t = ev["timings"]
        assert "prompt_per_second" in t and "predicted_per_second" in t
        assert t["predicted_n"] <= 6


@streaming
@pytest.mark.profile("llamacpp")
def test_return_progress(chat_server):
    msgs = messages("Tell me a long story about a cat named Tom and his friend, a dog named Max. " * 3)
    data = {"messages": msgs, "max_tokens": 2, "stream": True, "return_progress": True, "id_slot": 0}

    def progress_events():
        events = chat_server.make_stream_request("POST", "/v1/chat/completions", data).read_all()
        return [ev["prompt_progress"] for ev in events if "prompt_progress" in ev]

    first = progress_events()
    assert first, "no prompt_progress"
    assert len({p["total"] for p in first}) == 1 and len({p["cache"] for p in first}) == 1
    assert [p["processed"] for p in first] == sorted(p["processed"] for p in first)
    assert first[0]["cache"] == first[0]["processed"]
    assert first[-1]["processed"] == first[-1]["total"]
    second = progress_events()
    assert second[0]["cache"] > 0
    assert len(second) <= len(first)


# --------------------------------------------------------------------------- sampling
@sampling
@pytest.mark.profile("llamacpp")
def test_chat_logit_bias(chat_server):
    data = {"messages": messages(), "max_tokens": 12, "temperature": 0}
    base = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    words = [w.strip(".,!?") for w in base.split() if len(w.strip(".,!?")) >= 3]
    if not words:
        pytest.skip(f"no word to exclude in {base!r}")
    banned = words[0]
    ids = set(chat_server.tokenize(banned)) | set(chat_server.tokenize(" " + banned))
    body = chat_server.ok("/v1/chat/completions", {**data, "logit_bias": {str(i): -100 for i in ids}})
    content = body["choices"][0]["message"]["content"]
    assert content
    assert banned not in content


@sampling
def test_chat_stop(chat_server):
    data = {"messages": messages(), "max_tokens": 24, "temperature": 0}
    base = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    if len(base) < 6:
        pytest.skip(f"answer too short: {base!r}")
    stop = base[3:6]
    body = chat_server.ok("/v1/chat/completions", {**data, "stop": stop})
    assert body["choices"][0]["message"]["content"] == base[:base.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


@sampling
def test_chat_seeded_sampling_is_repeatable(chat_server):
    data = {"messages": messages(), "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    a = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    b = chat_server.ok("/v1/chat/completions", data)["choices"][0]["message"]["content"]
    assert a == b


# --------------------------------------------------------------------------- templates
LLAMA3_BOOK = ("<|start_header_id|>system<|end_header_id|>\n\nBook<|eot_id|><|start_header_id|>user<|end_header_id|>"
               "\n\nWhat is the best book<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

TEST_MESSAGES = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Hi there"}]
NAMED_RENDERINGS = {
    "command-r": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
                 "<|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "chatml": "<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a test.<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>user\nYou are a test.\n\nHi there<end_of_turn>\n<start_of_turn>model\n",
}


def template_server(name: str, verbose: bool = False):
    def make():
        server = ServerPreset.one_slot()
        # built-in template names are the non-Jinja engine's (llama.cpp's suite runs
        # --no-jinja); with --jinja, llama-server takes the value as Jinja source
        server.jinja = False
        server.chat_template = name
        server.verbose = verbose
        return server
    return make


@templates
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # --chat-template names and `__verbose` are llama-server's
def test_chat_template_llama3_verbose(server_pool):
    server = server_pool("llama3-verbose", template_server("llama3", verbose=True))
    body = server.ok("/chat/completions", {"max_tokens": 8, "messages": [
        {"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]})
    assert "__verbose" in body
    assert without_bos(server, body["__verbose"]["prompt"]) == LLAMA3_BOOK


@templates
@pytest.mark.needs_flags
@pytest.mark.parametrize("prefill", ["Whill", [{"type": "text", "text": "Wh"}, {"type": "text", "text": "ill"}]],
                         ids=["string", "parts"])
@pytest.mark.profile("llamacpp")  # prefill is llama.cpp's (--prefill-assistant), not OpenAI's
def test_assistant_prefill(server_pool, prefill):
    server = server_pool("llama3-verbose", template_server("llama3", verbose=True))
    body = server.ok("/chat/completions", {"max_tokens": 4, "messages": [
        {"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"},
        {"role": "assistant", "content": prefill}]})
    assert without_bos(server, body["__verbose"]["prompt"]) == LLAMA3_BOOK + "Whill"


@templates
@pytest.mark.needs_flags
@pytest.mark.parametrize("name", sorted(NAMED_RENDERINGS))
@pytest.mark.profile("llamacpp")
def test_apply_named_template(server_pool, name):
    server = server_pool(name, template_server(name))
    body = server.ok("/apply-template", {"messages": TEST_MESSAGES})
    assert without_bos(server, body["prompt"]) == NAMED_RENDERINGS[name]


@templates
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_chat_template_file(server_pool, tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[assistant]{% endif %}")

    def make():
        server = ServerPreset.one_slot()
        server.chat_template_file = str(path)
        return server

    server = server_pool("file", make)
    body = server.ok("/apply-template", {"messages": TEST_MESSAGES})
    assert without_bos(server, body["prompt"]) == "[system]You are a test.\n[user]Hi there\n[assistant]"
    assert server.ok("/v1/chat/completions", {"messages": TEST_MESSAGES, "max_tokens": 2})["choices"]


@templates
@pytest.mark.profile("llamacpp")
def test_apply_template_default(chat_server):
    body = chat_server.ok("/apply-template", {"messages": TEST_MESSAGES})
    assert "You are a test." in body["prompt"] and "Hi there" in body["prompt"]
    no_gen = chat_server.ok("/apply-template", {"messages": TEST_MESSAGES, "add_generation_prompt": False})
    assert len(no_gen["prompt"]) < len(body["prompt"])
    assert body["prompt"].startswith(no_gen["prompt"].rstrip())


@templates
@pytest.mark.profile("llamacpp")
def test_apply_template_prefill_appended(chat_server):
    base = chat_server.ok("/apply-template", {"messages": TEST_MESSAGES})["prompt"]
    prefill = chat_server.ok("/apply-template", {"messages": TEST_MESSAGES + [
        {"role": "assistant", "content": "Hel"}]})["prompt"]
    assert prefill == base + "Hel"


@templates
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # --no-jinja is llama-server's flag
def test_no_jinja_chat_works_and_tools_are_rejected(server_pool):
    def make():
        server = ServerPreset.one_slot()
        server.jinja = False
        return server

    server = server_pool("nojinja", make)
    assert server.ok("/v1/chat/completions", {"messages": messages(), "max_tokens": 2})["choices"]
    res = server.post("/v1/chat/completions", {"messages": messages(WEATHER), "tools": [WEATHER_TOOL],
                                               "max_tokens": 2})
    # CONTRACT §3: an error (refserver: 400; llama.cpp: 500 "tools param requires --jinja flag")
    assert res.status_code != 200 and client_error_status_ok(res.status_code)
    error_of(res)


# --------------------------------------------------------------------------- structured output
def _content(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


@structured
@pytest.mark.parametrize("response_format,expected", [
    pytest.param({"type": "json_object", "schema": {"const": "42"}}, "42", marks=pytest.mark.profile("llamacpp")),
    ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"const": "foooooo"}}}, "foooooo"),
    ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"enum": ["red", "green"]}}}, {"red", "green"}),
])
def test_response_format_const(chat_server, response_format, expected):
    """The content is JSON valid under the response_format's schema."""
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(), "max_tokens": 16,
                                                   "response_format": response_format})
    value = json.loads(_content(body))
    assert value in expected if isinstance(expected, set) else value == expected


@structured
@pytest.mark.profile("llamacpp")
def test_response_format_integer_array(chat_server):
    schema = {"type": "array", "items": {"type": "integer", "minimum": -99, "maximum": 99}, "minItems": 1,
              "maxItems": 3}
    body = chat_server.ok("/v1/chat/completions", {
        "messages": messages("Give me three numbers."), "max_tokens": 48, "temperature": 0,
        "response_format": {"type": "json_object", "schema": schema}})
    if body["choices"][0]["finish_reason"] == "length":
        pytest.fail(f"no complete array in 48 tokens: {_content(body)!r}")
    value = json.loads(_content(body))
    assert isinstance(value, list) and 1 <= len(value) <= 3
    assert all(isinstance(v, int) and not isinstance(v, bool) and -99 <= v <= 99 for v in value)


@structured
def test_response_format_object_schema_validates(chat_server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    body = chat_server.ok("/v1/chat/completions", {
        "messages": messages(WEATHER), "max_tokens": 48, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}}})
    value = json.loads(_content(body))
    assert set(value) == {"city", "sunny"}
    assert isinstance(value["city"], str) and len(value["city"]) <= 20
    assert isinstance(value["sunny"], bool)


@structured
def test_response_format_json_object_without_schema(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(), "max_tokens": 32, "temperature": 0,
                                                   "response_format": {"type": "json_object"}})
    content = _content(body)
    assert match_regex(r"^\s*\{", content), content
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)


@structured
@pytest.mark.parametrize("response_format", [{"type": "text"}, pytest.param({"type": ""}, marks=pytest.mark.profile("llamacpp"))])
def test_response_format_text_is_unconstrained(chat_server, response_format):
    data = {"messages": messages(), "max_tokens": 8, "temperature": 0}
    plain = _content(chat_server.ok("/v1/chat/completions", data))
    assert _content(chat_server.ok("/v1/chat/completions", {**data, "response_format": response_format})) == plain


@structured
@pytest.mark.parametrize("response_format", [
    {"type": "sound"}, pytest.param({"type": "json_object", "schema": 123}, marks=pytest.mark.profile("llamacpp")), {"type": 123}, {"type": "hiccup"},
    {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "no-such-type"}}},
], ids=["sound", "schema_123", "type_123", "hiccup", "bad_schema"])
def test_response_format_invalid_is_400(chat_server, response_format):
    """A response_format outside the documented types (text, json_object, json_schema) or with an
    invalid schema is a 400 with the error object."""
    res = chat_server.post("/v1/chat/completions", {"messages": messages(), "max_tokens": 4,
                                                    "response_format": response_format})
    assert res.status_code == 400, res.body
    error_of(res)


@structured
@pytest.mark.profile("llamacpp")
def test_top_level_json_schema(chat_server):
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(), "max_tokens": 8,
                                                   "json_schema": {"const": "42"}})
    assert _content(body) == '"42"'


@structured
@pytest.mark.parametrize("grammar,expected", [('root ::= "a"{5,5}', "aaaaa"),
                                              ('root ::= "yes" | "no"', {"yes", "no"})])
@pytest.mark.profile("llamacpp")
def test_grammar(chat_server, grammar, expected):
    body = chat_server.ok("/v1/chat/completions", {"messages": messages(), "max_tokens": 16, "grammar": grammar})
    content = _content(body)
    assert content in expected if isinstance(expected, set) else content == expected


@structured
@pytest.mark.parametrize("grammar,expected", [('root ::= "caf\\u00e9"', "café"), ('root ::= "\\x41\\x42"', "AB"),
                                              ('root ::= [\\u0394] "!"', "Δ!")], ids=["u", "x", "class"])
@pytest.mark.profile("llamacpp")
def test_gbnf_escapes(chat_server, grammar, expected):
    body = chat_server.ok("/completion", {"prompt": "Say: ", "n_predict": 16, "grammar": grammar})
    assert body["content"] == expected


@structured
@pytest.mark.profile("llamacpp")
def test_grammar_on_native_completion(chat_server):
    body = chat_server.ok("/completion", {"prompt": "Count: ", "n_predict": 16,
                                          "grammar": 'root ::= [0-9]{3}'})
    assert match_regex(r"^[0-9]{3}$", body["content"]), body["content"]


@structured
@pytest.mark.parametrize("extra", [
    {"json_schema": {"const": "1"}, "grammar": 'root ::= "1"'},
    {"grammar": "root ::= @@@ not a grammar"},
    {"grammar": 'root ::= "a"', "tools": [WEATHER_TOOL]},
], ids=["both", "bad_grammar", "grammar_with_tools"])
@pytest.mark.profile("llamacpp")
def test_invalid_constraints_are_400(chat_server, extra):
    res = chat_server.post("/v1/chat/completions", {"messages": messages(), "max_tokens": 4, **extra})
    assert res.status_code == 400, res.body
    error_of(res)


# --------------------------------------------------------------------------- tools
def _calls(body: dict) -> list[dict]:
    return body["choices"][0]["message"].get("tool_calls") or []


def skip_if_forced_call_truncated(body: dict) -> None:
    """A forced call cut by max_tokens (random weights may write long arguments) proves nothing
    either way, unless the server answered with plain text instead of starting a call."""
    if body["choices"][0]["finish_reason"] != "length":
        return
    content = (body["choices"][0]["message"].get("content") or "").strip()
    assert _calls(body) or not content or content.startswith(("<tool_call>", "{", "[")), \
        f"a forced tool call was answered with text: {content!r}"
    pytest.skip("the forced call did not finish within max_tokens on this model")


@tools
@pytest.mark.golden
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.profile("refserver")
def test_tool_call_golden(chat_server, stream):
    body = chat_server.make_any_request("POST", "/v1/chat/completions", {
        "messages": messages(WEATHER), "tools": [WEATHER_TOOL], "temperature": 0, "max_tokens": 48,
        "stream": stream})
    calls = _calls(body)
    assert len(calls) == 1, body
    assert calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert "<tool_call>" not in (body["choices"][0]["message"].get("content") or "")


@tools
@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_forces_valid_call(chat_server, stream):
    """tool_choice "required": the model must call one or more tools; each call names a given
    tool with JSON arguments, and finish_reason is "tool_calls"."""
    body = chat_server.make_any_request("POST", "/v1/chat/completions", {
        "messages": messages("Hello!"), "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required",
        "temperature": 0, "max_tokens": 128, "stream": stream})
    skip_if_forced_call_truncated(body)
    calls = _calls(body)
    assert calls, body
    for call in calls:
        assert call["function"]["name"] in {"get_weather", "get_time"}
        args = json.loads(call["function"]["arguments"])
        assert isinstance(args, dict) and isinstance(args.get("city"), str)
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@tools
def test_tool_choice_named_function(chat_server):
    """tool_choice naming a function forces the model to call that function."""
    body = chat_server.ok("/v1/chat/completions", {
        "messages": messages(WEATHER), "tools": [WEATHER_TOOL, TIME_TOOL], "temperature": 0, "max_tokens": 128,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    skip_if_forced_call_truncated(body)
    calls = _calls(body)
    assert calls and all(c["function"]["name"] == "get_time" for c in calls)


@tools
def test_tool_choice_none_forbids_calls(chat_server):
    body = chat_server.ok("/v1/chat/completions", {
        "messages": messages(WEATHER), "tools": [WEATHER_TOOL], "tool_choice": "none", "temperature": 0,
        "max_tokens": 32})
    assert not _calls(body)
    assert "<tool_call>" not in (_content(body) or "")
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


@tools
@pytest.mark.profile("llamacpp")
def test_tools_rendered_into_prompt(chat_server):
    prompt = chat_server.ok("/apply-template", {"messages": messages(WEATHER), "tools": [WEATHER_TOOL]})["prompt"]
    assert "get_weather" in prompt


@tools
@pytest.mark.parametrize("tool_choice", ["sometimes", {"type": "function", "function": {"name": "nope"}}])
def test_invalid_tool_choice_is_400(chat_server, tool_choice):
    res = chat_server.post("/v1/chat/completions", {"messages": messages(WEATHER), "tools": [WEATHER_TOOL],
                                                    "tool_choice": tool_choice, "max_tokens": 4})
    assert res.status_code == 400, res.body
    error_of(res)
