"""Responses and Messages renderers (library level): a choice's deltas → each API's events
and final object, in the documented order, with nothing lost between the two."""

import json

import pytest

from refserver.engine.types import TokenProb, TokenProbs
from refserver.http.messages_events import MessageRenderer
from refserver.http.responses_events import ResponseRenderer, response_usage
from refserver.stream.deltas import ReasoningDelta, TextDelta, TokenDelta, ToolCallArgs, ToolCallStart

pytestmark = pytest.mark.profile("refserver")  # library level

THINK_CALL = [ReasoningDelta("need "), ReasoningDelta("weather"), TextDelta("\n"),
              ToolCallStart(0, "call_abc", "get_weather"), ToolCallArgs(0, '{"city": '), ToolCallArgs(0, '"Oslo"}')]


def run_responses(deltas, stop="eos"):
    r = ResponseRenderer({"tools": []}, "m")
    events = r.start() + r.deltas(deltas) + r.finish(stop, response_usage(5, 1, 7, 3))
    return r, events


@pytest.mark.feature("responses")
def test_responses_reasoning_then_call():
    r, events = run_responses(THINK_CALL)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    out = events[-1]["response"]["output"]
    assert out[0]["content"] == [{"type": "reasoning_text", "text": "need weather"}]
    assert out[1] == {"id": out[1]["id"], "type": "function_call", "status": "completed", "call_id": "call_abc",
                      "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert events[-1]["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}
    assert r.response() == events[-1]["response"]


@pytest.mark.feature("responses")
def test_responses_incomplete_and_empty_arguments():
    _, events = run_responses([ToolCallStart(0, "call_x", "ping")], stop="limit")
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["arguments"] == "{}"


@pytest.mark.feature("responses")
def test_responses_whitespace_only_output_is_kept():
    _, events = run_responses([TextDelta(" ")])
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == " "


def token(tid: int, piece: str, text: str | None = None) -> TokenDelta:
    """A generated token with its logprob entry (itself and one alternative); `text`: what
    it released (its piece unless given: "" for the end token)."""
    probs = TokenProbs(TokenProb(tid, piece, list(piece.encode()), -0.5),
                       [TokenProb(tid, piece, list(piece.encode()), -0.5), TokenProb(99, "x", [120], -2.0)])
    return TokenDelta(tid, piece if text is None else text, probs)


@pytest.mark.feature("responses")
def test_responses_logprobs_follow_the_text():
    """A token's entry rides on the delta that releases its text (a held-back token's on a
    later one); the tokens of reasoning, its closing tag and the end token have none: the
    entries' bytes joined are the message's text."""
    r = ResponseRenderer({"tools": []}, "m", top_logprobs=1)
    deltas = [token(1, "<think>"), token(2, "hm"), ReasoningDelta("hm"), token(3, "</think>", ""),
              token(4, "Hi"), TextDelta("Hi"), token(5, " the", ""), token(6, "re"), TextDelta(" there"),
              token(7, "<|im_end|>", "")]
    events = r.start() + r.deltas(deltas) + r.finish("eos", response_usage(5, 0, 7, 3))
    texts = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [(e["delta"], [lp["token"] for lp in e["logprobs"]]) for e in texts] == [
        ("Hi", ["Hi"]), (" there", [" the", "re"])]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    part = events[-1]["response"]["output"][1]["content"][0]
    assert done["logprobs"] == part["logprobs"] == [lp for e in texts for lp in e["logprobs"]]
    assert b"".join(bytes(lp["bytes"]) for lp in part["logprobs"]).decode() == part["text"] == "Hi there"
    assert part["logprobs"][0]["top_logprobs"] == [{"id": 4, "token": "Hi", "bytes": [72, 105], "logprob": -0.5}]
    added = next(e for e in events if e["type"] == "response.content_part.added" and e["part"]["type"] == "output_text")
    assert added["part"]["logprobs"] == []  # the event as sent, not the list that grew later


@pytest.mark.feature("responses")
def test_responses_logprobs_of_whitespace_only_output():
    """Whitespace held until the end still gets its tokens' entries, not the end token's."""
    r = ResponseRenderer({"tools": []}, "m", top_logprobs=0)
    events = r.start() + r.deltas([token(1, " "), TextDelta(" "), token(2, "<|im_end|>", "")])
    events += r.finish("eos", response_usage(5, 0, 2, 0))
    assert [lp["token"] for lp in events[-1]["response"]["output"][0]["content"][0]["logprobs"]] == [" "]


@pytest.mark.feature("responses")
def test_responses_background_states():
    """queued (created, queued) -> in_progress at the first deltas; cancel closes the open
    item as incomplete, keeping its text."""
    r = ResponseRenderer({"tools": []}, "m", status="queued")
    events = r.start()
    assert [(e["type"], e["response"]["status"]) for e in events] == [
        ("response.created", "queued"), ("response.queued", "queued")]
    events = r.deltas([TextDelta("Once")])
    assert events[0]["type"] == "response.in_progress" and r.status == "in_progress"
    closed = r.cancel()
    assert [e["type"] for e in closed][-1] == "response.output_item.done"
    obj = r.response()
    assert obj["status"] == "cancelled" and obj["output"][0]["status"] == "incomplete"
    assert obj["output"][0]["content"][0]["text"] == "Once"


@pytest.mark.feature("messages")
def test_messages_thinking_then_tool_use():
    r = MessageRenderer("m", 9)
    events = r.start() + r.deltas(THINK_CALL) + r.finish("eos", "", 7, 4)
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in events]
    assert kinds == [("message_start", None), ("content_block_start", None),
                     ("content_block_delta", "thinking_delta"), ("content_block_delta", "thinking_delta"),
                     ("content_block_stop", None), ("content_block_start", None),
                     ("content_block_delta", "input_json_delta"), ("content_block_delta", "input_json_delta"),
                     ("content_block_stop", None), ("message_delta", None), ("message_stop", None)]
    msg = r.message()
    assert msg["content"][0] == {"type": "thinking", "thinking": "need weather", "signature": ""}
    assert msg["content"][1] == {"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
                                 "input": {"city": "Oslo"}}
    assert msg["stop_reason"] == "tool_use"
    assert msg["usage"]["input_tokens"] == 5 and msg["usage"]["cache_read_input_tokens"] == 4
    partial = "".join(e["delta"]["partial_json"] for e in events if e.get("delta", {}).get("type") == "input_json_delta")
    assert json.loads(partial) == msg["content"][1]["input"]


@pytest.mark.feature("messages")
@pytest.mark.parametrize("stop,word,reason,sequence", [
    ("limit", "", "max_tokens", None), ("word", "##", "stop_sequence", "##"), ("eos", "", "end_turn", None)])
def test_messages_stop_reasons(stop, word, reason, sequence):
    r = MessageRenderer("m", 3)
    r.deltas([TextDelta("hi")])
    delta = r.finish(stop, word, 1, 0)[-2]
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": sequence}
    assert r.message()["content"] == [{"type": "text", "text": "hi"}]


@pytest.mark.feature("messages")
def test_messages_truncated_tool_input_is_kept():
    r = MessageRenderer("m", 3)
    r.deltas([ToolCallStart(0, "call_q", "f"), ToolCallArgs(0, '{"a": "unfinis')])
    r.finish("limit", "", 5, 0)
    assert r.message()["content"][0]["input"] == {"_raw": '{"a": "unfinis'}
