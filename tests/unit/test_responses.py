"""OpenAI Responses API (`/v1/responses`) driven by the official openai SDK, streamed and
not, with function tools, structured output and stored responses."""

from __future__ import annotations

import json

import openai
import pytest
from utils import TARGET, ServerPreset

pytestmark = [pytest.mark.feature("responses"), pytest.mark.profile("openai")]

QUESTION = "What is the capital of France?"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(autouse=True)
def _needs_responses():
    TARGET.require("responses")  # a target without /v1/responses skips these


@pytest.fixture
def model(chat_server):
    """The model id the server lists (an OpenAI server answers 404 for a model it lacks)."""
    return chat_server.model_id()


@pytest.fixture
def client(chat_server):
    TARGET.require("responses")
    return openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="dummy", max_retries=0, timeout=120)


def test_create_plain(client, model):
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0)
    assert res.object == "response" and res.id.startswith("resp_")
    if res.status == "incomplete":  # a model that does not stop within 32 tokens (random weights)
        assert res.incomplete_details.reason == "max_output_tokens" and res.usage.output_tokens == 32
    else:
        assert res.status == "completed" and res.incomplete_details is None
    [item] = res.output
    assert item.type == "message" and item.role == "assistant" and item.status in ("completed", "incomplete")
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    assert res.output_text == item.content[0].text and res.output_text
    u = res.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0
    assert u.input_tokens_details.cached_tokens >= 0


def test_incomplete_at_max_output_tokens(client, model):
    res = client.responses.create(model=model, input="Tell me a long story about a cat.", max_output_tokens=3)
    if res.status == "completed" and res.usage.output_tokens < 3:
        pytest.skip("the model ended its answer before the limit")
    assert res.status == "incomplete"
    assert res.incomplete_details.reason == "max_output_tokens"
    assert res.usage.output_tokens == 3


def test_stream_events_in_order(client, model):
    events = list(client.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text == events[-1].response.output_text
    plain = client.responses.create(model=model, input=QUESTION, max_output_tokens=32, temperature=0)
    assert plain.output_text == text


def test_stream_helper_output_text(client, model):
    with client.responses.stream(model=model, input=QUESTION, max_output_tokens=32, temperature=0) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert streamed and final.output_text == streamed


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_loop(client, stream, model):
    """tool_choice required forces a call; its output sent back yields a text answer."""
    kwargs = {"model": model, "tools": [WEATHER], "max_output_tokens": 64, "temperature": 0}
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        with client.responses.stream(input=question, tool_choice="required", **kwargs) as s:
            deltas = "".join(e.delta for e in s if e.type == "response.function_call_arguments.delta")
            first = s.get_final_response()
    else:
        first = client.responses.create(input=question, tool_choice="required", **kwargs)
    calls = [o for o in first.output if o.type == "function_call"]
    if first.status == "incomplete" and not calls:
        pytest.skip("the forced call did not finish within max_output_tokens on this model")
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    if TARGET.runs_refserver:  # OpenAI promises schema-valid arguments only with strict tools
        assert isinstance(json.loads(calls[0].arguments)["city"], str)
    if stream:
        assert deltas == calls[0].arguments
    followup = question + [{"type": "function_call", "call_id": c.call_id, "name": c.name,
                            "arguments": c.arguments} for c in calls]
    followup += [{"type": "function_call_output", "call_id": c.call_id, "output": '{"temperature": 21}'}
                 for c in calls]
    answer = client.responses.create(input=followup, tool_choice="none", **kwargs)
    assert answer.status == "completed" and answer.output_text
    assert all(o.type == "message" for o in answer.output)


def test_json_schema_format(client, model):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    res = client.responses.create(model=model, input="What is the weather in Paris?", max_output_tokens=48,
                                  temperature=0, text={"format": {"type": "json_schema", "name": "w", "schema": schema,
                                                                  "strict": True}})
    data = json.loads(res.output_text)
    assert set(data) == {"city", "sunny"} and isinstance(data["sunny"], bool)
    assert res.text.format.type == "json_schema"


def test_store_and_previous_response_id(client, model):
    first = client.responses.create(model=model, input="My name is Tom.", max_output_tokens=16, temperature=0,
                                    store=True)
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "My name is Tom."
    second = client.responses.create(model=model, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0)
    assert second.previous_response_id == first.id
    # the chain's messages are in the prompt: more input tokens than the question alone
    alone = client.responses.create(model=model, input="What is my name?", max_output_tokens=16, temperature=0)
    assert second.usage.input_tokens > alone.usage.input_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_not_stored_and_unknown_ids_are_404(client, chat_server, model):
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=4, store=False)
    for call in (lambda: client.responses.retrieve(res.id), lambda: client.responses.delete("resp_nope"),
                 lambda: client.responses.input_items.list("resp_nope"),
                 lambda: client.responses.create(model=model, input="x", previous_response_id="resp_nope")):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.status_code == 404 and isinstance(err.value.body["message"], str)


@pytest.mark.parametrize("body,fragment", [
    ({}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "multimodal"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "function tools"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
])
@pytest.mark.profile("refserver")  # the wording of the message is refserver's
def test_bad_requests_named(chat_server, body, fragment):
    res = chat_server.post("/v1/responses", body)
    assert res.status_code == 400
    err = res.body["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_strict_rejects_unknown_fields(server_pool):
    def strict():
        server = ServerPreset.chat()
        server.strict = True
        return server

    server = server_pool("strict", strict)
    res = server.post("/v1/responses", {"input": "x", "max_output_tokens": 2, "bogus": 1})
    assert res.status_code == 400 and "bogus" in res.body["error"]["message"]
    ok = server.post("/v1/responses", {"input": "x", "max_output_tokens": 2, "seed": 1,
                                                           "metadata": {"k": "v"}, "include": []})
    assert ok.status_code == 200, ok.body


def test_input_items_pages(client, model):
    items = [{"role": "user", "content": f"Message {i}."} for i in range(5)]
    res = client.responses.create(model=model, input=items, max_output_tokens=2)
    page = client.responses.input_items.list(res.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["Message 0.", "Message 1."] and page.has_more
    every = [i.content[0].text for i in client.responses.input_items.list(res.id, limit=2, order="asc")]
    assert every == [f"Message {i}." for i in range(5)]  # the SDK follows `after` across pages
    newest = client.responses.input_items.list(res.id)
    assert newest.data[0].content[0].text == "Message 4." and not newest.has_more


# ------------------------------------------------------------------ logprobs (`include`)
LOGPROBS = {"include": ["message.output_text.logprobs"], "top_logprobs": 3, "temperature": 0}


def _check_entries(entries, top_n: int) -> None:
    """OpenAI's entry shape, as the SDK parsed it: token, logprob, bytes and the sorted
    alternatives, each with token, logprob and bytes."""
    for e in entries:
        assert isinstance(e.token, str) and e.logprob <= 0 and isinstance(e.bytes, list)
        assert len(e.top_logprobs) == top_n
        assert all(isinstance(t.token, str) and isinstance(t.bytes, list) for t in e.top_logprobs)
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True) and e.logprob <= lps[0] + 1e-6


def _text_of(entries) -> str:
    """The entries' bytes joined (bytes that are no UTF-8, from random weights, dropped)."""
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace").replace("\ufffd", "")


def test_logprobs_on_output_text(client, model):
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=48, **LOGPROBS)
    [item] = res.output
    entries = item.content[0].logprobs
    _check_entries(entries, 3)
    assert _text_of(entries) == res.output_text.replace("\ufffd", "")
    assert res.top_logprobs == 3
    if TARGET.runs_refserver:  # one entry per token of the text: all generated but the end token
        assert len(entries) == res.usage.output_tokens - (res.status == "completed")


def test_logprobs_streamed_equal_non_streamed(client, model):
    """Each delta carries the entries of its tokens: joined they are the `.done` event's and
    the final content part's, and equal the non-streamed response's (temperature 0)."""
    kwargs = {"model": model, "input": QUESTION, "max_output_tokens": 48, **LOGPROBS}
    events = list(client.responses.create(stream=True, **kwargs))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    streamed = [lp for e in deltas for lp in e.logprobs]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert "".join(e.delta for e in deltas) == done.text
    final = events[-1].response.output[0].content[0].logprobs
    assert [(e.token, e.logprob) for e in done.logprobs] == [(e.token, e.logprob) for e in streamed]
    assert [(e.token, e.logprob) for e in final] == [(e.token, e.logprob) for e in streamed]
    plain = client.responses.create(**kwargs).output[0].content[0].logprobs
    assert [e.token for e in plain] == [e.token for e in final]
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(plain, final))
    _check_entries(final, 3)


def test_logprobs_need_include(client, model):
    """`top_logprobs` alone returns no `logprobs` entries (OpenAI: an empty list; the SDK's
    type allows null); with the include and no `top_logprobs`, each entry lists no alternatives."""
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=4, top_logprobs=3)
    assert not res.output[0].content[0].logprobs
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=4,
                                  include=["message.output_text.logprobs"])
    entries = res.output[0].content[0].logprobs
    assert entries and all(e.top_logprobs == [] for e in entries)


def test_include_values(client, model):
    """Documented `include` values this server has nothing to add for are accepted (Codex
    CLI sends `reasoning.encrypted_content` with every request); an unknown one is a 400."""
    res = client.responses.create(model=model, input=QUESTION, max_output_tokens=2,
                                  include=["reasoning.encrypted_content", "web_search_call.action.sources"])
    assert res.status in ("completed", "incomplete")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model, input=QUESTION, max_output_tokens=2, include=["message.bogus"])
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model, input=QUESTION, max_output_tokens=2, top_logprobs=21,
                                include=["message.output_text.logprobs"])


@pytest.mark.profile("refserver")  # the wording of the message is refserver's
def test_unknown_include_names_the_accepted(chat_server):
    res = chat_server.post("/v1/responses", {"input": "x", "max_output_tokens": 2, "include": ["bogus"]})
    assert res.status_code == 400
    message = res.body["error"]["message"]
    assert "'bogus'" in message and "message.output_text.logprobs" in message
