"""The official openai client, sync and async, streaming and not."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from utils import WEATHER_TOOL, match_regex

pytestmark = [pytest.mark.feature("openai_client"), pytest.mark.profile("openai")]

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
STORY = "Once upon a time, there was a little cat named Tom."


@pytest.fixture
def client(chat_server):
    return openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="dummy", max_retries=0, timeout=120)


@pytest.fixture
def model(chat_server):
    """The model id the server lists (an OpenAI server answers 404 for a model it lacks)."""
    return chat_server.model_id()


@pytest.fixture
def aclient(chat_server):
    return openai.AsyncOpenAI(base_url=f"{chat_server.url}/v1", api_key="dummy", max_retries=0, timeout=120)


def finished(reason: str | None, completion_tokens: int, max_tokens: int) -> None:
    """A documented finish_reason, with "length" exactly at max_tokens."""
    assert reason in ("stop", "length"), reason
    assert completion_tokens <= max_tokens and (reason != "length" or completion_tokens == max_tokens)


def test_completions(client, model):
    """client.completions.create: a text completion within max_tokens."""
    res = client.completions.create(model=model, prompt=STORY, max_tokens=8)
    assert isinstance(res.choices[0].text, str)
    finished(res.choices[0].finish_reason, res.usage.completion_tokens, 8)


def test_completions_stream(client, model):
    """client.completions.create(stream=True): chunks whose text joins up, one finish_reason."""
    text, finish = "", None
    for chunk in client.completions.create(model=model, prompt=STORY, max_tokens=8, stream=True):
        for ch in chunk.choices:
            text += ch.text or ""
            finish = ch.finish_reason or finish
    assert finish in ("stop", "length")
    assert text or finish == "stop"


def test_chat(client, model):
    """client.chat.completions.create: an assistant message within max_tokens."""
    res = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, seed=42, temperature=0.8)
    assert res.choices[0].message.role == "assistant"
    assert isinstance(res.choices[0].message.content, str)
    finished(res.choices[0].finish_reason, res.usage.completion_tokens, 8)


@pytest.mark.golden
@pytest.mark.profile("refserver")
def test_chat_golden(client, model):
    res = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=32, temperature=0)
    assert match_regex("Paris", res.choices[0].message.content)


def test_chat_stream_with_usage(client, model):
    """stream_options.include_usage through the client: the usage arrives, consistent with max_tokens."""
    content, usage, finish = "", None, None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert usage is not None, "no usage chunk"
    finished(finish, usage.completion_tokens, 8)


def test_chat_logprobs(client, model):
    """The entries' bytes (or tokens, where bytes is null) rebuild the content; at most
    top_logprobs alternatives each."""
    res = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    entries = res.choices[0].logprobs.content
    text = b"".join(bytes(e.bytes) if e.bytes is not None else e.token.encode() for e in entries)
    text = text.decode("utf-8", "replace")
    assert text.replace("\ufffd", "") == res.choices[0].message.content.replace("\ufffd", "")
    assert all(len(e.top_logprobs) <= 3 for e in entries)


def test_models_list(client):
    models = client.models.list()
    assert len(models.data) >= 1
    assert models.data[0].id


def test_bad_request_raises(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4,
                                       response_format={"type": "hiccup"})
    assert exc.value.status_code == 400


@pytest.mark.profile("llamacpp")
def test_context_exceeded_raises(client, chat_server, model):
    slot_ctx = chat_server.props()["default_generation_settings"]["n_ctx"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, max_tokens=4,
                                       messages=[{"role": "user", "content": "Tell me a story. " * slot_ctx}])
    assert exc.value.body["type"] == "exceed_context_size_error" or "context" in str(exc.value)


def test_tool_choice_required(client, model):
    """tool_choice "required" through the client: the message carries a call of the tool."""
    res = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                         tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=128)
    if res.choices[0].finish_reason == "length" and (res.choices[0].message.content or "").strip()[:1] in "{[<":
        pytest.skip("the forced call did not finish within max_tokens on this model")
    call = res.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert res.choices[0].finish_reason == "tool_calls"


def test_async_chat(aclient, model):
    async def main():
        async with aclient:
            results = await asyncio.gather(*[
                aclient.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, seed=i)
                for i in range(3)])
            return results
    results = asyncio.run(main())
    assert len(results) == 3
    assert all(r.choices[0].message.content for r in results)


def test_async_chat_stream(aclient, model):
    """The async client streams a chat completion to one documented finish_reason."""
    async def main():
        async with aclient:
            stream = await aclient.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6,
                                                           stream=True)
            parts, finish = [], None
            async for chunk in stream:
                for ch in chunk.choices:
                    parts.append(ch.delta.content or "")
                    finish = ch.finish_reason or finish
            return "".join(parts), finish
    content, finish = asyncio.run(main())
    assert finish in ("stop", "length")
    assert content or finish == "stop"


def test_async_completions(aclient, model):
    async def main():
        async with aclient:
            return await aclient.completions.create(model=model, prompt=STORY, max_tokens=4)
    res = asyncio.run(main())
    assert res.choices[0].text is not None
    assert res.usage.prompt_tokens > 0
