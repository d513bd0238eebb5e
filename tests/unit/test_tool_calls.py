"""Hermes tool-call parser, streamed and not, and finish_reason (library level)."""

import json
import re

import pytest

from refserver.chat import ContentDelta, HermesToolCallParser, ToolCallDelta, finish_reason_for

pytestmark = [pytest.mark.feature("tools"), pytest.mark.profile("refserver")]

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, {"a": "}"}]}}</tool_call>'


def stream(text, chunk=1):
    p = HermesToolCallParser()
    out = []
    for i in range(0, len(text), chunk):
        out += p.feed(text[i:i + chunk])
    out += p.finish()
    return p, out


def collect(deltas):
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    calls = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            if d.id is not None:
                assert d.index not in calls, "the id comes only on the first delta of a call"
                calls[d.index] = {"id": d.id, "name": d.name, "arguments": ""}
            else:
                assert d.name is None
            calls[d.index]["arguments"] += d.arguments
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_single_call_streamed(chunk):
    p, out = stream("Let me check.\n" + CALL, chunk)
    content, calls = collect(out)
    assert content == "Let me check.\n"
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", calls[0]["id"])
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "n": [1, {"a": "}"}]}
    assert "<" not in content and "tool_call" not in content
    assert p.calls[0].id == calls[0]["id"]
    assert p.calls[0].arguments == json.dumps({"city": "Paris", "n": [1, {"a": "}"}]})


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_several_calls_with_newlines(chunk):
    text = ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n\n'
            '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\n'
            '<tool_call>{"name": "c", "arguments": {"s": "<tool_call>"}}</tool_call>')
    _p, out = stream(text, chunk)
    content, calls = collect(out)
    assert content == ""
    assert [c["name"] for c in calls] == ["a", "b", "c"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"x": 1}, {}, {"s": "<tool_call>"}]
    assert len({c["id"] for c in calls}) == 3


def test_argument_fragments_stream_incrementally():
    p = HermesToolCallParser()
    out = p.feed('<tool_call>{"name": "f", "arguments": {"q": "hel')
    assert out == [ToolCallDelta(0, out[0].id, "f", '{"q": "hel')]
    out = p.feed('lo"}}</tool')
    assert out == [ToolCallDelta(0, None, None, 'lo"}')]
    assert p.feed("_call>") == []
    assert p.finish() == []
    assert p.calls[0].arguments == '{"q": "hello"}'


def test_partial_marker_held_back_and_released():
    p = HermesToolCallParser()
    assert p.feed("a <tool") == [ContentDelta("a ")]
    assert p.feed("box") == [ContentDelta("<toolbox")]
    assert p.feed(" <") == [ContentDelta(" ")]
    assert p.finish() == [ContentDelta("<")]


def test_content_after_call():
    content, calls = HermesToolCallParser().parse(CALL + "\n\nDone.")
    assert content == "Done." and len(calls) == 1


def test_parse_non_streamed():
    content, calls = HermesToolCallParser().parse("Hi there")
    assert content == "Hi there" and calls == []
    content, calls = HermesToolCallParser().parse(CALL + "\n" + CALL.replace("get_weather", "x"))
    assert content is None and [c.name for c in calls] == ["get_weather", "x"]
    assert calls[0].to_dict()["type"] == "function"


def test_arguments_first_is_buffered():
    _p, out = stream('<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>')
    content, calls = collect(out)
    assert content == "" and calls[0]["name"] == "f" and calls[0]["arguments"] == '{"a": 1}'


def test_arguments_as_json_string():
    _content, calls = HermesToolCallParser().parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert calls[0].name == "f"


def test_unterminated_complete_json_is_a_call():
    _p, out = stream('<tool_call>{"name": "f", "arguments": {"a": 1}}')
    content, calls = collect(out)
    assert content == "" and calls[0]["arguments"] == '{"a": 1}'


def test_unterminated_truncated_call_keeps_streamed_header():
    p, out = stream('<tool_call>{"name": "f", "arguments": {"a": "unfin')
    content, calls = collect(out)
    assert content == "" and calls[0]["name"] == "f" and len(p.calls) == 1


def test_invalid_call_becomes_content():
    text = "<tool_call>not json at all</tool_call> tail"
    content, calls = HermesToolCallParser().parse(text)
    assert calls == [] and content == text
    # cut off (max_tokens) before the JSON is complete: dropped, markup never leaks
    content, calls = HermesToolCallParser().parse("<tool_call>{broken")
    assert calls == [] and not content


def test_streamed_equals_non_streamed():
    text = "Sure.\n" + CALL + "\n" + CALL
    _, out = stream(text, 3)
    content, calls = collect(out)
    c2, calls2 = HermesToolCallParser().parse(text)
    assert content.strip() == c2
    assert [json.loads(c["arguments"]) for c in calls] == [json.loads(c.arguments) for c in calls2]


def test_custom_markers():
    p = HermesToolCallParser(start="[TOOL]", end="[/TOOL]")
    content, calls = p.parse('x[TOOL]{"name": "f", "arguments": {}}[/TOOL]')
    assert content == "x" and calls[0].name == "f"


def test_delta_to_dict():
    d = ToolCallDelta(0, "call_x", "f", "")
    assert d.to_dict() == {"index": 0, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ToolCallDelta(0, None, None, "{").to_dict() == {"index": 0, "function": {"arguments": "{"}}


@pytest.mark.parametrize("stop_type,has,expected", [
    ("eos", True, "tool_calls"), ("word", True, "tool_calls"), ("limit", True, "length"),
    ("eos", False, "stop"), ("word", False, "stop"), ("limit", False, "length"), ("none", True, "stop"),
])
def test_finish_reason(stop_type, has, expected):
    assert finish_reason_for(stop_type, has) == expected
