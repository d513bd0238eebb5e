"""Tool calls in each family's own syntax, end to end over HTTP: a server started with a real
template (--chat-template-file, ../shared/templates) detects the family's format (/props), and
`tool_choice: "required"` makes the embedded model write a call in that syntax (the family's
grammar drives the real engine); the call comes back parsed as `tool_calls`, streamed and not,
identically.

Command-R7B is left out: its template's fixed preamble is 3.7k tokens in the embedded
model's vocabulary, beyond its 2048-token context (its format has unit tests in
test_formats.py)."""

from __future__ import annotations

import json

import pytest
from utils import SHARED_DIR, TARGET, ServerPreset

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
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "enum": ["Paris", "Rome"]}},
                                               "required": ["city"]}}}]
BODY = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is the weather in Paris?"}], "tools": TOOLS,
        "tool_choice": "required", "max_tokens": 256, "temperature": 0}


def streamed_calls(server) -> tuple[str | None, list[dict], str]:
    """(content, [{name, arguments}], finish_reason) folded from the SSE chunks."""
    content, calls, finish = None, [], None
    for chunk in server.make_stream_request("POST", "/v1/chat/completions", {**BODY, "stream": True}):
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            if delta.get("content"):
                content = (content or "") + delta["content"]
            for d in delta.get("tool_calls") or ():
                if d.get("id"):
                    assert d["index"] == len(calls)
                    calls.append({"name": d["function"]["name"], "arguments": ""})
                calls[d["index"]]["arguments"] += d["function"].get("arguments", "")
            finish = choice.get("finish_reason") or finish
    return content, calls, finish


@pytest.mark.parametrize("fmt", sorted(FAMILIES))
def test_required_call_in_family_syntax(fmt):
    if not TARGET.runs_refserver:
        pytest.skip("format detection and /props tool_call_format are refserver's")
    path = SHARED_DIR / "templates" / FAMILIES[fmt]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/templates beside the checkout)")
    server = ServerPreset.long_context()
    server.n_predict = 256  # markers are many tokens in the embedded model's vocabulary
    server.chat_template_file = str(path)
    server.start()
    try:
        assert server.ok("/props", None)["tool_call_format"] == fmt
        prompt = server.ok("/apply-template", BODY)["prompt"]
        assert "get_weather" in prompt
        res = server.ok("/v1/chat/completions", BODY)
        choice = res["choices"][0]
        msg = choice["message"]
        assert choice["finish_reason"] == "tool_calls", msg
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in msg["tool_calls"]]
        assert len(calls) == 1 and calls[0]["name"] == "get_weather"
        assert json.loads(calls[0]["arguments"])["city"] in ("Paris", "Rome")
        assert msg["content"] in (None, "")
        content, stream_calls, finish = streamed_calls(server)
        assert (content or None, stream_calls, finish) == (msg["content"] or None, calls, "tool_calls")
    finally:
        server.stop()


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
