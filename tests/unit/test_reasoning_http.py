"""Reasoning over HTTP through the real model: a thinking template (it opens `<think>` in the
generation prompt) and a grammar that makes the model close the block and answer.  The
reasoning is split from content on chat (streamed and not, identically), and becomes
Responses `reasoning` items and Messages `thinking` blocks."""

from __future__ import annotations

import anthropic
import openai
import pytest
from utils import REPO_ROOT, TARGET, ServerPreset

pytestmark = [pytest.mark.feature("reasoning"), pytest.mark.profile("llamacpp")]  # reasoning_content is llama.cpp's
needs_template = pytest.mark.needs_flags  # the thinking template is a --chat-template-file

THINKING_TEMPLATE = str(REPO_ROOT / "tests" / "fixtures" / "thinking.jinja")
# the prompt opened <think>: the model reasons, closes the block, answers
AFTER_OPEN = 'root ::= [a-z ,]{4,40} "</think>" [A-Za-z ,.]{1,40}'
# the prompt opened nothing: the model writes the whole block itself
WHOLE_BLOCK = 'root ::= "<think>" [a-z ,]{4,40} "</think>" [A-Za-z ,.]{1,40}'
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MARKUP = ("<think>", "</think>")


@pytest.fixture(scope="module")
def thinking_server(server_pool):
    def make():
        server = ServerPreset.chat()
        server.chat_template_file = THINKING_TEMPLATE
        return server

    return server_pool("thinking", make)


def chat(server, **body):
    return server.ok("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 96, "temperature": 0,
                                              "grammar": AFTER_OPEN, **body})


def streamed_chat(server, **body):
    events = server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": QUESTION, "max_tokens": 96, "temperature": 0, "grammar": AFTER_OPEN, "stream": True,
        "stream_options": {"include_usage": True}, **body}).read_all()
    deltas = [c["choices"][0]["delta"] for c in events if isinstance(c, dict) and c.get("choices")]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    usage = next(c["usage"] for c in events if isinstance(c, dict) and c.get("usage"))
    return reasoning, content, usage


def assert_split(reasoning: str, content: str) -> None:
    assert reasoning.strip() and content.strip()
    assert not any(m in reasoning or m in content for m in MARKUP)


@needs_template
def test_chat_reasoning_content_stream_equals_non_stream(thinking_server):
    body = chat(thinking_server)
    message = body["choices"][0]["message"]
    assert_split(message["reasoning_content"], message["content"])
    reasoning, content, usage = streamed_chat(thinking_server)
    assert (reasoning, content) == (message["reasoning_content"], message["content"])
    details = body["usage"]["completion_tokens_details"]  # OpenAI's usage: reasoning_tokens
    assert 0 < details["reasoning_tokens"] < body["usage"]["completion_tokens"]
    assert usage["completion_tokens_details"] == details


@needs_template
@pytest.mark.profile("refserver")  # llama.cpp parses no reasoning once thinking is off
def test_block_written_by_the_model(thinking_server):
    """enable_thinking false: the template closes an empty block; the model opens its own."""
    kwargs = {"chat_template_kwargs": {"enable_thinking": False}, "grammar": WHOLE_BLOCK}
    message = chat(thinking_server, **kwargs)["choices"][0]["message"]
    assert_split(message["reasoning_content"], message["content"])
    assert streamed_chat(thinking_server, **kwargs)[:2] == (message["reasoning_content"], message["content"])


@needs_template
def test_reasoning_format_none_keeps_it_in_content(thinking_server):
    message = chat(thinking_server, reasoning_format="none")["choices"][0]["message"]
    assert "</think>" in message["content"]
    assert not message.get("reasoning_content")


@needs_template
def test_reasoning_of_earlier_turns_reaches_the_template(thinking_server):
    # `reasoning` (vLLM's newer name) is refserver's extension; llama.cpp reads reasoning_content
    for key in ("reasoning_content", "reasoning") if TARGET.runs_refserver else ("reasoning_content",):
        history = [*QUESTION, {"role": "assistant", "content": "Paris.", key: "recall the atlas"},
                   {"role": "user", "content": "And Italy?"}]
        prompt = thinking_server.ok("/apply-template", {"messages": history})["prompt"]
        assert "<think>\nrecall the atlas\n</think>" in prompt, key


@needs_template
def test_responses_reasoning_item(thinking_server):
    client = openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="x", max_retries=0, timeout=120)
    kwargs = {"model": "m", "input": "What is the capital of France?", "max_output_tokens": 96, "temperature": 0,
              "extra_body": {"grammar": AFTER_OPEN}}
    res = client.responses.create(**kwargs)
    assert [o.type for o in res.output] == ["reasoning", "message"]
    reasoning = res.output[0].content[0].text
    assert_split(reasoning, res.output_text)
    assert res.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert streamed == done.text == reasoning
    assert final.output_text == res.output_text


@needs_template
@pytest.mark.profile("refserver")  # `grammar` on /v1/responses is refserver's
def test_responses_logprobs_after_reasoning(thinking_server):
    """With a reasoning item first, the message's logprobs still cover its text alone (the
    reasoning and `</think>` tokens have none), streamed and not alike."""
    client = openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="x", max_retries=0, timeout=120)
    kwargs = {"model": "m", "input": "What is the capital of France?", "max_output_tokens": 96, "temperature": 0,
              "include": ["message.output_text.logprobs"], "top_logprobs": 2, "extra_body": {"grammar": AFTER_OPEN}}
    res = client.responses.create(**kwargs)
    assert [o.type for o in res.output] == ["reasoning", "message"]
    entries = res.output[1].content[0].logprobs
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace") == res.output_text
    events = list(client.responses.create(stream=True, **kwargs))
    streamed = [e.token for ev in events if ev.type == "response.output_text.delta" for e in ev.logprobs]
    assert streamed == [e.token for e in entries]


@needs_template
@pytest.mark.profile("refserver")  # needs `grammar` on /v1/messages: refserver's, llama-server ignores it there
def test_messages_thinking_block(thinking_server):
    client = anthropic.Anthropic(base_url=thinking_server.url, api_key="x", max_retries=0, timeout=120)
    kwargs = {"model": "m", "max_tokens": 96, "messages": QUESTION,
              "extra_body": {"grammar": AFTER_OPEN, "temperature": 0}}
    msg = client.messages.create(**kwargs)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert_split(msg.content[0].thinking, msg.content[1].text)
    with client.messages.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    thinking = "".join(e.delta.thinking for e in events
                       if e.type == "content_block_delta" and e.delta.type == "thinking_delta")
    assert thinking == msg.content[0].thinking == final.content[0].thinking
    assert final.content[1].text == msg.content[1].text
    # thinking disabled: the template closes an empty block (more prompt tokens)
    on = client.messages.count_tokens(model="m", messages=QUESTION).input_tokens
    off = client.messages.count_tokens(model="m", messages=QUESTION, thinking={"type": "disabled"}).input_tokens
    assert off > on


@pytest.mark.parametrize("flags", [
    {"reasoning": "off"},
    # llama.cpp's --reasoning-budget 0 ends the block while generating; closing it in the template is refserver's
    pytest.param({"reasoning_budget": 0}, marks=pytest.mark.profile("refserver"))])
@needs_template
def test_reasoning_off_flags(server_pool, flags):
    def make():
        server = ServerPreset.chat()
        server.chat_template_file = THINKING_TEMPLATE
        for k, v in flags.items():
            setattr(server, k, v)
        return server

    server = server_pool(f"off-{flags}", make)
    prompt = server.ok("/apply-template", {"messages": QUESTION})["prompt"]
    assert prompt.endswith("<think>\n\n</think>\n\n")
    on = server.ok("/apply-template", {"messages": QUESTION, "chat_template_kwargs": {"enable_thinking": True}})
    assert on["prompt"].endswith("<think>\n")


@needs_template
@pytest.mark.profile("refserver")  # a per-request reasoning_budget is refserver's
def test_reasoning_budget_forces_the_block_closed(thinking_server):
    """A budget of 6 tokens: the engine writes </think> after them, the answer follows;
    Anthropic's thinking.budget_tokens is the same budget."""
    n_end = len(thinking_server.tokenize("</think>"))
    body = {"messages": QUESTION, "max_tokens": 30, "temperature": 0, "ignore_eos": True, "reasoning_budget": 6}
    res = thinking_server.ok("/v1/chat/completions", body)
    message = res["choices"][0]["message"]
    assert_split(message["reasoning_content"], message["content"])
    assert res["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6 + n_end
    events = thinking_server.make_stream_request("POST", "/v1/chat/completions", {**body, "stream": True}).read_all()
    deltas = [c["choices"][0]["delta"] for c in events if c.get("choices")]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    client = anthropic.Anthropic(base_url=thinking_server.url, api_key="x", max_retries=0, timeout=120)
    msg = client.messages.create(model="m", max_tokens=30, messages=QUESTION,
                                 thinking={"type": "enabled", "budget_tokens": 6},
                                 extra_body={"temperature": 0, "ignore_eos": True})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == message["reasoning_content"]


@pytest.mark.profile("refserver")  # llama.cpp parses reasoning only where the template thinks
def test_model_written_block_on_the_default_template(chat_server):
    """Any chat template: a model that writes <think>...</think> before its answer (made to
    by a grammar) gets it split off, on chat, Responses and Messages alike."""
    message = chat(chat_server, grammar=WHOLE_BLOCK)["choices"][0]["message"]
    assert_split(message["reasoning_content"], message["content"])
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="x", max_retries=0, timeout=120)
    res = client.responses.create(model="m", input=QUESTION[0]["content"], max_output_tokens=96, temperature=0,
                                  extra_body={"grammar": WHOLE_BLOCK})
    assert [o.type for o in res.output] == ["reasoning", "message"]
    assert (res.output[0].content[0].text, res.output_text) == (message["reasoning_content"], message["content"])
    msg = anthropic.Anthropic(base_url=chat_server.url, api_key="x", max_retries=0, timeout=120).messages.create(
        model="m", max_tokens=96, messages=QUESTION, extra_body={"grammar": WHOLE_BLOCK, "temperature": 0})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert (msg.content[0].thinking, msg.content[1].text) == (message["reasoning_content"], message["content"])
