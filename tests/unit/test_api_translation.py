"""Responses and Messages requests translated onto chat requests (library level, no server)."""

import pytest

from refserver.errors import InvalidRequest
from refserver.schemas.common import parse_request
from refserver.schemas.messages import CountTokensRequest, MessagesRequest
from refserver.schemas.responses import ResponsesRequest

pytestmark = pytest.mark.profile("refserver")  # library level

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def responses(body, history=(), strict=False):
    return parse_request(ResponsesRequest, body).to_chat(list(history), strict)


def messages(body, strict=False):
    return parse_request(MessagesRequest, {"model": "m", "max_tokens": 16, **body}).to_chat(strict)


@pytest.mark.feature("responses")
def test_responses_string_input_and_instructions():
    chat = responses({"input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9, "temperature": 0})
    assert chat.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat.max_completion_tokens == 9 and chat.temperature == 0


@pytest.mark.feature("responses")
def test_responses_items_become_messages():
    chat = responses({"input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "ask"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]}, history=[{"role": "user", "content": "earlier"}])
    m = chat.messages
    assert [x["role"] for x in m] == ["user", "system", "user", "assistant", "tool"]
    assert m[3]["reasoning_content"] == "ask"
    assert [c["id"] for c in m[3]["tool_calls"]] == ["c1", "c2"]
    assert m[4] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


@pytest.mark.feature("responses")
def test_responses_tools_choice_and_format():
    chat = responses({"input": "x", "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER,
                                               "strict": True}],
                      "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False})
    assert chat.tools == [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                                            "strict": True}}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    fmt = responses({"input": "x", "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER,
                                                       "strict": True}}}).response_format
    assert fmt == {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}


@pytest.mark.feature("responses")
@pytest.mark.parametrize("body,fragment", [
    ({}, "'input' is required"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "multimodal"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "only function tools"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "unsupported item type"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "call_id"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
])
def test_responses_bad_input_named(body, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        responses(body)


@pytest.mark.feature("responses")
def test_responses_strict_names_unknown_fields_but_passes_extensions():
    assert responses({"input": "x", "grammar": 'root ::= "a"', "store": False}, strict=True).grammar
    with pytest.raises(InvalidRequest, match="bogus"):
        responses({"input": "x", "bogus": 1}, strict=True)


@pytest.mark.feature("messages")
def test_messages_blocks_become_chat_messages():
    chat = messages({
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "need a tool", "signature": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And now?"}]},
        ],
        "stop_sequences": ["\n\n"], "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}})
    m = chat.messages
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "user"]
    assert m[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert m[2]["reasoning_content"] == "need a tool" and m[2]["content"] is None
    assert m[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert chat.stop == ["\n\n"] and chat.top_k == 5 and chat.max_tokens == 16
    assert chat.chat_template_kwargs == {"enable_thinking": True}


@pytest.mark.feature("messages")
@pytest.mark.parametrize("choice,chat_choice,parallel", [
    ({"type": "auto"}, "auto", True),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, True),
    ({"type": "none"}, "none", True),
])
def test_messages_tool_choice(choice, chat_choice, parallel):
    chat = messages({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
                     "tools": [{"name": "get_weather", "description": "d", "input_schema": WEATHER}]})
    assert chat.tool_choice == chat_choice and chat.parallel_tool_calls is parallel
    assert chat.tools[0]["function"]["parameters"] == WEATHER


@pytest.mark.feature("messages")
@pytest.mark.parametrize("body,fragment", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "multimodal"),
    ({"messages": []}, "must not be empty"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled"}}, "budget_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "w"}]},
     "server tools"),
])
def test_messages_bad_input_named(body, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        messages(body)


@pytest.mark.feature("messages")
def test_messages_max_tokens_required_but_not_for_count_tokens():
    with pytest.raises(InvalidRequest, match="max_tokens"):
        parse_request(MessagesRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    req = parse_request(CountTokensRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert req.to_chat().messages == [{"role": "user", "content": "x"}]


@pytest.mark.feature("messages")
def test_messages_tool_result_error_and_string_content():
    chat = messages({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}]},
    ]})
    assert chat.messages[-1] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert chat.messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.feature("responses")
def test_responses_output_parts_and_effort_none():
    chat = responses({"input": [{"type": "function_call_output", "call_id": "c",
                                 "output": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}],
                      "reasoning": {"effort": "none"}})
    assert chat.messages == [{"role": "tool", "tool_call_id": "c", "content": "a\nb"}]
    assert chat.chat_template_kwargs == {"enable_thinking": False}
