"""response_format / tools -> llguidance Constraints, checked with llguidance itself."""

import json

import pytest
from utils import STORIES260K_DIR

from refserver.chat import chat_constraint, response_format_constraint, tools_constraint
from refserver.engine.constraints import to_llguidance_grammar, validate_constraint
from refserver.errors import InvalidRequest

pytestmark = [pytest.mark.feature("structured_output"), pytest.mark.profile("refserver")]
llguidance = pytest.importorskip("llguidance")

TOKENIZER = STORIES260K_DIR / "onnx-genai" / "tokenizer.json"


@pytest.fixture(scope="module")
def tok():
    if not TOKENIZER.exists():
        pytest.skip("stories260K tokenizer not present")
    return llguidance.LLTokenizer(str(TOKENIZER))


def accepts(tok, constraint, text, complete=True):
    """Does the constraint's grammar accept `text` (as a whole when complete)?"""
    m = llguidance.LLMatcher(tok, to_llguidance_grammar(constraint), log_level=0)
    assert not m.is_error(), m.get_error()
    ids = tok.tokenize_str(text)
    if m.validate_tokens(ids) != len(ids):
        return False
    assert m.consume_tokens(ids)
    return m.is_accepting() if complete else True


# -- response_format ---------------------------------------------------------------------

def test_json_object_any(tok):
    c = response_format_constraint({"type": "json_object"})
    assert c.kind == "json_schema" and json.loads(c.text)["type"] == "object"
    assert json.loads(c.text)["x-guidance"] == {"whitespace_flexible": False, "item_separator": ", ",
                                                "key_separator": ": "}
    assert accepts(tok, c, '{"a": [1, 2]}')
    assert not accepts(tok, c, '{"a":  1}')
    assert not accepts(tok, c, "[1]")
    validate_constraint(c, tok)


def test_json_object_schema(tok):
    c = response_format_constraint({"type": "json_object", "schema": {"const": "42"}})
    assert accepts(tok, c, '"42"') and not accepts(tok, c, '"43"')


def test_json_schema_type(tok):
    c = response_format_constraint({"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "array", "items": {"type": "integer"}}}})
    assert accepts(tok, c, "[1, -3000]") and not accepts(tok, c, '["a"]')


@pytest.mark.parametrize("rf", [None, {"type": "text"}, {}])
def test_no_constraint(rf):
    assert response_format_constraint(rf) is None


@pytest.mark.parametrize("rf", [
    {"type": "sound"}, {"type": 123}, {"type": "hiccup"},
    {"type": "json_object", "schema": 123},
    {"type": "json_object", "schema": {"type": 123}},
    {"type": "json_object", "schema": {"type": "hiccup"}},
    {"type": "json_schema", "json_schema": "nope"},
    "json_object",
])
def test_invalid_response_format(rf):
    """Refused when built (shape) or when the engine validates it (schema content)."""
    with pytest.raises(InvalidRequest):
        validate_constraint(response_format_constraint(rf))


def test_top_level_json_schema_and_grammar(tok):
    c = response_format_constraint(None, json_schema={"const": "42"})
    assert c.kind == "json_schema" and accepts(tok, c, '"42"')
    g = response_format_constraint(None, grammar='root ::= "a"{5,5}')
    assert g.kind == "gbnf" and accepts(tok, g, "aaaaa") and not accepts(tok, g, "aaaa")
    with pytest.raises(InvalidRequest, match="not both"):
        response_format_constraint(None, json_schema={"const": "42"}, grammar='root ::= "a"')
    with pytest.raises(InvalidRequest):
        response_format_constraint({"type": "json_object"}, grammar='root ::= "a"')
    with pytest.raises(InvalidRequest):
        response_format_constraint(None, json_schema=[1])
    with pytest.raises(InvalidRequest):
        validate_constraint(response_format_constraint(None, grammar='root ::= "a'))


def test_grammar_kinds(tok):
    assert response_format_constraint(None, grammar='start: "x"+').kind == "lark"
    c = response_format_constraint(None, grammar='%llguidance {}\nstart: "y"')
    assert c.kind == "lark" and accepts(tok, c, "y")
    assert response_format_constraint(None, grammar='root ::= [a-z]+\n').kind == "gbnf"


# -- tools -------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]}}}
CALL_W = '{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
CALL_T = '{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'


def test_tools_auto_is_lazy(tok):
    c = tools_constraint([WEATHER, TIME], "auto")
    assert c.kind == "lark" and c.lazy_trigger == "<tool_call>"
    validate_constraint(c, tok)
    assert accepts(tok, c, CALL_W)
    assert accepts(tok, c, CALL_T)
    assert accepts(tok, c, "\n" + CALL_W.replace("}}</", "}}\n</"))
    assert not accepts(tok, c, CALL_W.replace("get_weather", "get_wether"), complete=False)
    assert not accepts(tok, c, CALL_W.replace("city", "town"), complete=False)
    assert not accepts(tok, c, CALL_T.replace("UTC", "PST"), complete=False)
    assert not accepts(tok, c, CALL_W.replace('": ', '":'), complete=False)
    assert not accepts(tok, c, CALL_W + "<tool_call>" + CALL_T, complete=False)  # not parallel


def test_tools_auto_parallel(tok):
    c = tools_constraint([WEATHER, TIME], "auto", parallel_tool_calls=True)
    assert accepts(tok, c, CALL_W + "\n<tool_call>" + CALL_T)
    assert accepts(tok, c, CALL_W)
    assert not accepts(tok, c, CALL_W + "\nHello", complete=False)


def test_tools_required(tok):
    c = tools_constraint([WEATHER, TIME], "required")
    assert c.lazy_trigger is None
    assert accepts(tok, c, "<tool_call>" + CALL_T)
    assert not accepts(tok, c, "Hello", complete=False)


def test_tools_named(tok):
    c = tools_constraint([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert accepts(tok, c, "<tool_call>" + CALL_T)
    assert not accepts(tok, c, "<tool_call>" + CALL_W, complete=False)
    with pytest.raises(InvalidRequest, match="not in 'tools'"):
        tools_constraint([WEATHER], {"type": "function", "function": {"name": "nope"}})


def test_tools_none_and_errors():
    assert tools_constraint([WEATHER], "none") is None
    assert tools_constraint([], "auto") is None
    with pytest.raises(InvalidRequest):
        tools_constraint([WEATHER], "sometimes")
    with pytest.raises(InvalidRequest):
        tools_constraint([{"type": "function"}], "auto")
    with pytest.raises(InvalidRequest, match="tool parameters schema"):
        validate_constraint(tools_constraint([{"type": "function", "function": {"name": "f",
                                                                                "parameters": {"type": 5}}}]))


def test_chat_constraint_checks_every_conflict_in_one_place():
    rf = {"type": "json_object"}
    for extra in ({"response_format": rf}, {"json_schema": {"type": "object"}}, {"grammar": 'root ::= "a"'}):
        args = {"response_format": None, "json_schema": None, "grammar": None, **extra}
        with pytest.raises(InvalidRequest, match="'tools' cannot be combined"):
            chat_constraint(tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False, **args)
        # tool_choice "none": the model cannot call tools, so structured output applies
        c = chat_constraint(tools=[WEATHER], tool_choice="none", parallel_tool_calls=False, **args)
        assert c is not None and c.lazy_trigger is None
    with pytest.raises(InvalidRequest, match="not both"):
        chat_constraint(tools=None, tool_choice=None, parallel_tool_calls=False, response_format=None,
                        json_schema={"type": "object"}, grammar='root ::= "a"')


def test_tool_without_parameters_and_odd_name(tok):
    c = tools_constraint([{"type": "function", "function": {"name": 'we"ird'}}], "required")
    assert accepts(tok, c, '<tool_call>{"name": "we\\"ird", "arguments": {}}</tool_call>')
