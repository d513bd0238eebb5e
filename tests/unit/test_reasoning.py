"""Reasoning parser (library level): `<think>` split off the output, streamed in any
chunking equal to the whole-text parse, markers never leaked, composed with tool calls."""

import pytest

from refserver.chat import HermesToolCallParser
from refserver.chat.reasoning import ReasoningParser, opened_by_prompt
from refserver.stream.deltas import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart
from refserver.stream.parsers import ParserChain

pytestmark = pytest.mark.feature("reasoning")


def run(text, chunk, in_reasoning=False, tools=False):
    p = ParserChain([ReasoningParser(in_reasoning)] + ([HermesToolCallParser()] if tools else []))
    out = []
    for i in range(0, len(text), chunk):
        out += p.feed(text[i:i + chunk])
    out += p.finish()
    reasoning = "".join(d.text for d in out if isinstance(d, ReasoningDelta))
    content = "".join(d.text for d in out if isinstance(d, TextDelta))
    return reasoning, content, [d for d in out if isinstance(d, (ToolCallStart, ToolCallArgs))]


CASES = [
    # text, opened by the prompt, reasoning, content
    ("<think>sum 2 and 2</think>\n\nIt is 4.", False, "sum 2 and 2", "It is 4."),
    ("\n<think>\nhmm</think>ok", False, "hmm", "ok"),
    ("plain answer <think>not reasoning</think>", False, "", "plain answer <think>not reasoning</think>"),
    ("a < b </think", False, "", "a < b </think"),
    ("<thi", False, "", "<thi"),
    ("cut off <", True, "cut off <", ""),
    ("weighing a < b</think>yes", True, "weighing a < b", "yes"),
    ("<think>never closed", False, "never closed", ""),
    ("<think></think>answer", False, "", "answer"),
    (" </think> answer", True, "", "answer"),
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
def test_split_any_chunking(text, opened, reasoning, content, chunk):
    assert run(text, chunk, opened)[:2] == (reasoning, content)
    assert ReasoningParser(opened).parse(text) == (reasoning or None, content)


def test_markers_never_streamed():
    p = ReasoningParser()
    seen = []
    for ch in "<think>x</think>y":
        seen += [d.text for d in p.feed(ch)]
    seen += [d.text for d in p.finish()]
    assert "".join(seen) == "xy"
    assert not any("<" in s or ">" in s for s in seen)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_reasoning_then_tool_call(chunk):
    text = '<think>need weather</think>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    reasoning, content, calls = run(text, chunk, tools=True)
    assert reasoning == "need weather"
    assert content == ""
    assert calls[0].name == "get_weather"
    assert "".join(c.text for c in calls[1:]) == '{"city": "Oslo"}'


def test_think_markup_inside_a_call_is_not_reasoning():
    text = '<tool_call>{"name": "f", "arguments": {"s": "<think>"}}</tool_call>'
    reasoning, content, calls = run(text, 1, tools=True)
    assert reasoning == "" and content == "" and calls


@pytest.mark.parametrize("prompt,opened", [
    ("<|im_start|>assistant\n<think>\n", True),
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
    ("<|im_start|>assistant\n", False),
])
def test_opened_by_prompt(prompt, opened):
    assert opened_by_prompt(prompt) is opened
