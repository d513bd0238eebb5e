"""Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) driven by the
official anthropic SDK: text and tool use, streamed and not, errors in Anthropic's shape."""

from __future__ import annotations

import anthropic
import pytest
from utils import TARGET, ServerPreset

pytestmark = [pytest.mark.feature("messages"), pytest.mark.profile("llamacpp")]  # llama.cpp serves Messages too

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
GREEDY = {"temperature": 0}  # the SDK no longer has the parameter; the API still takes it


def make_client(server, **kw):
    return anthropic.Anthropic(base_url=server.url, api_key="dummy", max_retries=0, timeout=120, **kw)


@pytest.fixture(autouse=True)
def _needs_messages():
    TARGET.require("messages")  # a target without /v1/messages skips these


@pytest.fixture
def client(chat_server):
    return make_client(chat_server)


def test_create(client):
    msg = client.messages.create(model="claude-any", max_tokens=32, messages=QUESTION, extra_body=GREEDY)
    assert msg.id and msg.type == "message" and msg.role == "assistant"
    if TARGET.runs_refserver:  # Anthropic: "the format and length of IDs may change over time"
        assert msg.id.startswith("msg_")
    assert msg.model == "claude-any" or not TARGET.runs_refserver  # Anthropic: "the model that handled the request"
    [block] = msg.content
    assert block.type == "text" and block.text
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    u = msg.usage
    assert u.output_tokens > 0 and u.input_tokens + u.cache_read_input_tokens > 0


def test_max_tokens_and_stop_sequence(client):
    cut = client.messages.create(model="m", max_tokens=3, messages=[{"role": "user", "content": "Tell me a story."}],
                                 extra_body={"ignore_eos": True})
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    full = client.messages.create(model="m", max_tokens=32, messages=QUESTION, extra_body=GREEDY)
    word = full.content[0].text.split()[2]
    stopped = client.messages.create(model="m", max_tokens=32, messages=QUESTION, stop_sequences=[word],
                                     extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text


def test_stream_text_equals_create(client):
    with client.messages.stream(model="m", max_tokens=32, messages=QUESTION, extra_body=GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    streamed = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    plain = client.messages.create(model="m", max_tokens=32, messages=QUESTION, extra_body=GREEDY)
    assert streamed == final.content[0].text == plain.content[0].text
    assert final.stop_reason == plain.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_loop(client, stream):
    """tool_choice any forces a call (input_json_delta when streamed); its tool_result
    yields a text answer."""
    kwargs = {"model": "m", "max_tokens": 64, "tools": [WEATHER], "extra_body": GREEDY}
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        with client.messages.stream(messages=question, tool_choice={"type": "any"}, **kwargs) as s:
            events = list(s)
            msg = s.get_final_message()
        partial = "".join(e.delta.partial_json for e in events
                          if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
        assert partial
    else:
        msg = client.messages.create(messages=question, tool_choice={"type": "any"}, **kwargs)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and uses
    assert uses[0].name == "get_weather" and uses[0].id
    assert uses[0].id.startswith("toolu_") or not TARGET.runs_refserver  # the prefix is no documented rule
    assert isinstance(uses[0].input["city"], str)
    followup = question + [{"role": "assistant", "content": msg.content},
                           {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                         "content": "Sunny, 21 degrees."}]}]
    answer = client.messages.create(messages=followup, tool_choice={"type": "none"}, **kwargs)
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"


def test_count_tokens(client, chat_server):
    n = client.messages.count_tokens(model="m", messages=QUESTION).input_tokens
    with_system = client.messages.count_tokens(model="m", messages=QUESTION, system="Be brief.").input_tokens
    assert 0 < n < with_system
    msg = client.messages.create(model="m", max_tokens=4, messages=QUESTION)
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == n


@pytest.mark.parametrize("kwargs,fragment", [
    ({"max_tokens": 0, "messages": QUESTION}, "max_tokens"),
    ({"max_tokens": 8, "messages": []}, "messages"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     "multimodal"),
    ({"max_tokens": 8, "messages": QUESTION, "tool_choice": {"type": "tool"}}, "tool_choice"),
])
def test_bad_request_raises_bad_request_error(client, kwargs, fragment):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="m", **kwargs)
    body = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"] or not TARGET.runs_refserver  # the wording is refserver's


def test_anthropic_headers_accepted(chat_server):
    res = chat_server.post("/v1/messages", {"model": "m", "max_tokens": 2, "messages": QUESTION},
                           headers={"anthropic-version": "2023-06-01", "anthropic-beta": "x"})
    assert res.status_code == 200 and res.body["type"] == "message"


@pytest.mark.needs_flags
def test_api_key_as_x_api_key(server_pool):
    def keyed():
        server = ServerPreset.chat()
        server.api_key = "sk-anthropic"
        return server

    server = server_pool("keyed", keyed)
    with pytest.raises(anthropic.AuthenticationError) as err:
        make_client(server).messages.create(model="m", max_tokens=2, messages=QUESTION)
    assert err.value.body["error"]["type"] == "authentication_error"
    ok = anthropic.Anthropic(base_url=server.url, api_key="sk-anthropic", max_retries=0)
    assert ok.messages.create(model="m", max_tokens=2, messages=QUESTION).type == "message"
    assert ok.messages.count_tokens(model="m", messages=QUESTION).input_tokens > 0


@pytest.mark.parametrize("raw", [
    b"", b"{not json", b"[]", b'"x"', b"null", b'{"model": 1, "max_tokens": "2", "messages": {}}',
    b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}',
    b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}], "tools": [{}]}',
    b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}], "thinking": "on"}',
    b'{"model": "m", "max_tokens": 2, "messages": [' + b"[" * 50000 + b"]" * 50000 + b"]}",
])
def test_malformed_bodies_are_4xx_in_anthropic_shape(chat_server, raw):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        res = chat_server.make_request("POST", path, raw=raw, timeout=60)
        assert 400 <= res.status_code < 500, (path, res.status_code, res.body)
        assert res.body["type"] == "error" and res.body["error"]["type"] == "invalid_request_error"
        assert isinstance(res.body["error"]["message"], str) and res.body["error"]["message"]
    assert chat_server.get("/health").status_code == 200
