"""Command-R7B end to end over HTTP: its real tool-use template, whose fixed preamble is 3.7k
tokens in the project's tokenizer, served by the zoo's llama in the plain layout declared with
8192 positions (`llama-plain-8k`, tools/make_zoo.py: the same graph as llama-plain-fp32, which
computes its rotary angles from position ids).  Its weights are random, so grammars (and a
logit bias) drive what it writes; refserver must read that as Command-R7B means it:
`<|START_THINKING|>` -> reasoning_content, `<|START_ACTION|>[...]` -> tool_calls,
`<|START_RESPONSE|>` -> content, streamed and not, identically."""

from __future__ import annotations

import json

import pytest
from utils import REPO_ROOT, SHARED_DIR, TARGET, ServerProcess, chat_outcome

pytestmark = [pytest.mark.feature("tools"), pytest.mark.profile("refserver"), pytest.mark.needs_flags]

MODEL = REPO_ROOT / "tests" / "fixtures" / "zoo" / "llama-plain-8k"
TEMPLATE = SHARED_DIR / "templates" / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "enum": ["Paris", "Rome"]}},
                                               "required": ["city"]}}}]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Paris?"}]
BODY = {"messages": MESSAGES, "tools": TOOLS, "tool_choice": "required", "max_tokens": 250, "temperature": 0}
MARKERS = ("<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|START_RESPONSE|>")


@pytest.fixture(scope="module")
def server():
    if not TARGET.runs_refserver:
        pytest.skip("format detection and /props tool_call_format are refserver's")
    if not TEMPLATE.is_file() or not MODEL.is_dir():
        pytest.skip(f"needs {TEMPLATE} and {MODEL}")
    server = ServerProcess(model=str(MODEL), threads=1, n_ctx=8192, n_slots=1, n_predict=256, jinja=True)
    server.chat_template_file = str(TEMPLATE)
    server.start()
    yield server
    server.stop()


def test_preamble_needs_the_longer_context(server):
    assert server.ok("/props", None)["tool_call_format"] == "command_r7b"
    prompt = server.ok("/apply-template", BODY)["prompt"]
    assert 2048 < len(server.ok("/tokenize", {"content": prompt})["tokens"]) < 8192 - 256


def test_required_call(server):
    reasoning, content, calls, finish = chat_outcome(server, BODY)
    assert (reasoning, content, finish) == (None, None, "tool_calls")
    assert [name for name, _ in calls] == ["get_weather"] and json.loads(calls[0][1])["city"] in ("Paris", "Rome")


def test_reasoning_then_call(server):
    """The forced grammar lets the model plan in <|START_THINKING|> first (as the template asks):
    a bias steers it there, the reasoning budget closes the block after 8 tokens, then the call."""
    steer = server.ok("/tokenize", {"content": "THINKING|>"})["tokens"]
    body = {**BODY, "logit_bias": [[t, 20] for t in steer], "reasoning_budget": 8}
    reasoning, content, calls, finish = chat_outcome(server, body)
    assert reasoning and not any(m in reasoning for m in MARKERS), reasoning
    assert (content, finish, [name for name, _ in calls]) == (None, "tool_calls", ["get_weather"])


def test_reasoning_and_answer_without_tools(server):
    text = "<|START_THINKING|>I will check.<|END_THINKING|><|START_RESPONSE|>It is sunny.<|END_RESPONSE|>"
    body = {"messages": MESSAGES, "max_tokens": 100, "grammar": "start: " + json.dumps(text)}
    assert chat_outcome(server, body) == ("I will check.", "It is sunny.", [], "stop")


def test_tool_choice_none(server):
    """A bias toward the action marker's tokens writes no call; a grammar that writes an action
    anyway (it wins over the ban) gets it back as content."""
    steer = server.ok("/tokenize", {"content": "<|START_ACTION|>"})["tokens"]
    body = {**BODY, "tool_choice": "none", "max_tokens": 48, "logit_bias": [[t, 15] for t in steer]}
    _, content, calls, finish = chat_outcome(server, body)
    assert (calls, finish in ("stop", "length")) == ([], True) and "<|START_ACTION|>" not in (content or "")
    action = '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}]' \
             "<|END_ACTION|>"
    body = {**BODY, "tool_choice": "none", "grammar": "start: " + json.dumps(action)}
    assert chat_outcome(server, body) == (None, action, [], "stop")
