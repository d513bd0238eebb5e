"""Reasoning parser (library level): `<think>` split off the output, streamed in any
chunking equal to the whole-text parse, markers never leaked, composed with tool calls."""

import pytest

from refserver.chat import HermesToolCallParser
from refserver.chat.reasoning import ReasoningParser, opened_by_prompt
from refserver.engine.budget import BudgetState, SpanBudget
from refserver.stream.deltas import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart
from refserver.stream.parsers import ParserChain

pytestmark = [pytest.mark.feature("reasoning"), pytest.mark.profile("refserver")]  # library level


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


@pytest.mark.parametrize("opened,tokens,forced_at", [
    (True, [7, 8, 9], 3),            # opened by the prompt: counting from the first token
    (False, [5, 1, 2, 7, 8, 9], 6),  # 5 opens the span, then three tokens
])
def test_span_budget_forces_the_end(opened, tokens, forced_at):
    state = BudgetState(SpanBudget(start=(1, 2), end=(3, 4), n=3, opened=opened))
    for i, t in enumerate(tokens):
        assert state.forced() is None, i
        state.accept(t)
    assert len(tokens) == forced_at and state.forced() == 3
    state.accept(3)
    assert state.forced() == 4
    state.accept(4)
    assert state.forced() is None and state.closed
    state.accept(7)
    assert state.forced() is None


def test_span_budget_not_forced_when_the_model_closes():
    state = BudgetState(SpanBudget(start=(1,), end=(3, 4), n=3, opened=True))
    for t in (7, 3, 4, 8, 8, 8):
        state.accept(t)
        assert state.forced() is None
    assert state.closed
