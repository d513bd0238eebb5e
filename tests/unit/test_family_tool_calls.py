"""Tool calls in each family's own syntax, end to end over HTTP: a server started with a real
template (--chat-template-file, ../shared/templates) detects the family's format (/props), and
`tool_choice: "required"` makes the embedded model write a call in that syntax (the family's
grammar drives the real engine); the call comes back parsed as `tool_calls`, streamed and not,
identically.  `tool_choice: "none"` keeps the model from opening a call in the family's syntax
even when a logit bias pushes it toward the call marker's tokens; a request grammar that writes a
call anyway (it wins over the ban) gets its markup back as content, never as a call.

Command-R7B runs on a longer-context model in test_command_r7b.py (its template's preamble
exceeds the embedded model's 2048-token context).  LFM2 has no grammar (unit tests only)."""

from __future__ import annotations

import json

import pytest
from utils import SHARED_DIR, TARGET, ServerPreset, chat_outcome

from refserver.chat.formats import CALL_MARKERS, REASONING_MARKERS
from refserver.chat.formats.syntax import SYNTAX

pytestmark = [pytest.mark.feature("tools"), pytest.mark.profile("refserver"), pytest.mark.needs_flags]

FAMILIES = {
    "hermes": "Qwen-Qwen3-0.6B.jinja",
    "llama3_json": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral": "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
    "harmony": "openai-gpt-oss-120b.jinja",
    "deepseek": "deepseek-ai-DeepSeek-V3.1.jinja",
    "kimi_k2": "moonshotai-Kimi-K2.jinja",
    "granite": "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "nemotron_v2": "NVIDIA-Nemotron-Nano-v2.jinja",
    "firefunction_v2": "fireworks-ai-llama-3-firefunction-v2.jinja",
    "functionary_v3_1": "meetkai-functionary-medium-v3.1.jinja",
    "qwen3_coder": "Qwen3-Coder.jinja",
    "seed_oss": "ByteDance-Seed-OSS.jinja",
    "glm45": "GLM-4.6.jinja",
    "minimax_m2": "MiniMax-M2.jinja",
    "functionary_v3_2": "meetkai-functionary-medium-v3.2.jinja",
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "enum": ["Paris", "Rome"]}},
                                               "required": ["city"]}}}]
BODY = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is the weather in Paris?"}], "tools": TOOLS,
        "tool_choice": "required", "max_tokens": 256, "temperature": 0}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    """(format, a server started with that family's real template)."""
    if not TARGET.runs_refserver:
        pytest.skip("format detection and /props tool_call_format are refserver's")
    path = SHARED_DIR / "templates" / FAMILIES[request.param]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/templates beside the checkout)")
    server = ServerPreset.long_context()
    server.n_predict = 256  # markers are many tokens in the embedded model's vocabulary
    server.chat_template_file = str(path)
    server.start()
    yield request.param, server
    server.stop()


def test_required_call_in_family_syntax(family):
    fmt, server = family
    assert server.ok("/props", None)["tool_call_format"] == fmt
    prompt = server.ok("/apply-template", BODY)["prompt"]
    assert "get_weather" in prompt
    _, content, calls, finish = chat_outcome(server, BODY)
    assert finish == "tool_calls", content
    assert len(calls) == 1 and calls[0][0] == "get_weather"
    assert json.loads(calls[0][1])["city"] in ("Paris", "Rome")
    assert content is None


def test_tool_choice_none_writes_no_call(family):
    """A bias toward every token of the family's call markers: no whole marker is written and
    no call comes back.  (For functionary v3.2 the same request under "auto" does call.)"""
    fmt, server = family
    ids = {t for m in CALL_MARKERS[fmt] for t in server.ok("/tokenize", {"content": m})["tokens"]}
    body = {**BODY, "tool_choice": "none", "max_tokens": 48, "logit_bias": [[t, 15] for t in sorted(ids)]}
    _, content, calls, finish = chat_outcome(server, body)
    assert (calls, finish in ("stop", "length")) == ([], True), content
    assert not any(m in (content or "") for m in CALL_MARKERS[fmt]), content
    if fmt == "functionary_v3_2":
        assert chat_outcome(server, {**body, "tool_choice": "auto"})[3] == "tool_calls"


# what a whole-output format's parser makes of a call's markup when no call may be made
NO_CALL_CONTENT = {"harmony": '{"city": "Paris"}'}


def test_tool_choice_none_leaves_forced_markup_as_content(family):
    """A request grammar that writes a call in the family's syntax wins over the ban grammar;
    with tool_choice "none" its markup is content (not a call), streamed and not."""
    fmt, server = family
    if fmt not in SYNTAX:
        pytest.skip(f"{fmt}: its call marker is one token, banned beside any grammar")
    text = SYNTAX[fmt].write([("get_weather", {"city": "Paris"})])
    if any(len(server.ok("/tokenize", {"content": m})["tokens"]) == 1 for m in CALL_MARKERS[fmt]):
        pytest.skip(f"{fmt}: its call marker is one token, banned beside any grammar")
    body = {**BODY, "tool_choice": "none"}
    opened = server.ok("/apply-template", body)["prompt"].rstrip().endswith("<think>")
    written = ("</think>" if opened else "") + text  # a think block the prompt opened is closed first
    body["grammar"] = "start: " + json.dumps(written, ensure_ascii=False)
    assert chat_outcome(server, body)[1:] == (NO_CALL_CONTENT.get(fmt, text), [], "stop")


@pytest.mark.parametrize("family", sorted(set(FAMILIES) & set(REASONING_MARKERS)), indirect=True)
def test_reasoning_in_family_markers(family):
    """Families whose reasoning block has its own markers (Ministral's [THINK], Seed-OSS's
    <seed:think>): a grammar writes a block and an answer, which come back as
    reasoning_content and content, streamed and not."""
    fmt, server = family
    start, end = REASONING_MARKERS[fmt]
    body = {"messages": BODY["messages"], "max_tokens": 100, "temperature": 0,
            "grammar": "start: " + json.dumps(f"{start}Check the sky.{end}It is sunny.")}
    assert chat_outcome(server, body) == ("Check the sky.", "It is sunny.", [], "stop")


def test_harmony_channels_without_tools():
    """gpt-oss answers in channels even without tools: analysis -> reasoning_content, final ->
    content (a grammar makes the embedded model write them), streamed == non-streamed."""
    if not TARGET.runs_refserver:
        pytest.skip("format detection is refserver's")
    path = SHARED_DIR / "templates" / FAMILIES["harmony"]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/templates beside the checkout)")
    server = ServerPreset.long_context()
    server.n_predict = 256
    server.chat_template_file = str(path)
    server.start()
    try:
        body = {"messages": BODY["messages"], "max_tokens": 256, "temperature": 0,
                "grammar": 'root ::= "<|channel|>analysis<|message|>Check the sky.<|end|>'
                           '<|start|>assistant<|channel|>final<|message|>It is sunny."'}
        msg = server.ok("/v1/chat/completions", body)["choices"][0]["message"]
        assert (msg.get("reasoning_content"), msg["content"]) == ("Check the sky.", "It is sunny.")
        reasoning = content = ""
        for chunk in server.make_stream_request("POST", "/v1/chat/completions", {**body, "stream": True}):
            for choice in chunk.get("choices", []):
                reasoning += choice["delta"].get("reasoning_content") or ""
                content += choice["delta"].get("content") or ""
        assert (reasoning, content) == ("Check the sky.", "It is sunny.")
    finally:
        server.stop()
