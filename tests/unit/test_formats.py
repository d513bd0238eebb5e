"""Tool-call output formats per model family (refserver.chat.formats): real syntax samples
parsed whole and streamed in random chunkings (identical results, no markup in content), the
format each real template implies, and the grammars that enforce tool_choice per family."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from utils import SHARED_DIR

from refserver.chat.formats import (
    CALL_MARKERS,
    PARSERS,
    detect_tool_format,
    plain_answer_prefix,
    reasoning_markers,
    tool_call_parser,
)
from refserver.chat.formats.syntax import SYNTAX
from refserver.chat.grammars import (
    close_reasoning_first,
    forbid_calls_constraint,
    reasoning_first,
    tools_constraint,
)
from refserver.chat.tool_calls import ContentDelta, ToolCallDelta
from refserver.engine.constraints import to_llguidance_grammar
from refserver.errors import InvalidRequest
from refserver.stream.deltas import ReasoningDelta, ToolCallArgs, ToolCallStart
from refserver.stream.parsers import select_parsers

pytestmark = [pytest.mark.feature("tools"), pytest.mark.profile("refserver")]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}}]
PARIS = {"city": "Paris"}
W = ("get_weather", PARIS)

# (format, model output, expected content, expected calls [(name, arguments)])
SAMPLES = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', None, [W]),
    ("qwen3_coder", ("Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"), "Let me check.",
     [("get_weather", {"city": "Paris", "days": 3})]),
    ("seed_oss", ("<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n"
     "</seed:tool_call>"), None, [W]),
    ("glm45", ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
     "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"), None,
     [("get_weather", {"city": "Paris", "days": 3})]),
    ("minimax_m2", ('<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
     "</invoke>\n</minimax:tool_call>"), None, [W]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [W]),
    ("llama3_json", '<|python_tag|>brave_search.call(query="weather in Paris")', None,
     [("brave_search", {"query": "weather in Paris"})]),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}]', None, [W]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"city": "Rome"}', None,
     [W, ("get_time", {"city": "Rome"})]),
    ("harmony", ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'), None, [W]),
    ("harmony", ("<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>"
     "Paris is the capital."), "Paris is the capital.", []),
    ("deepseek", ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}"
     "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"), None, [W]),
    ("deepseek", ("I will check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
     "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"), "I will check.", [W]),
    ("kimi_k2", ("<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
     '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'), None, [W]),
    ("command_r7b", ('<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", '
     '"parameters": {"city": "Paris"}}\n]<|END_ACTION|>'), None, [W]),
    ("command_r7b", "<|START_RESPONSE|>Paris is sunny.<|END_RESPONSE|>", "Paris is sunny.", []),
    ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]', None, [W]),
    ("nemotron_v2", '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>', None, [W]),
    ("firefunction_v2", 'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]', None, [W]),
    ("functionary_v3_1", '<function=get_weather>{"city": "Paris"}</function>', None, [W]),
    ("lfm2", '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>', None, [W]),
    # functionary v3.2: the prompt ends with ">>>", the output opens with the recipient
    ("functionary_v3_2", 'get_weather\n{"city": "Paris"}', None, [W]),
    ("functionary_v3_2", 'all\nLet me check.\n>>>get_weather\n{"city": "Paris"}\n>>>get_time\n{"city": "Rome"}',
     "Let me check.", [W, ("get_time", {"city": "Rome"})]),
    ("functionary_v3_2", "all\nParis is sunny.\nSee >> there.", "Paris is sunny.\nSee >> there.", []),
    ("functionary_v3_2", "python\nimport math\nprint(math.pi > 3)", None,
     [("python", {"code": "import math\nprint(math.pi > 3)"})]),
    ("functionary_v3_2", "get_weather\nnot json", "get_weather\nnot json", []),
]
PLAIN = "The capital of France is Paris. <b>Bold</b> [x] {y}"


def _calls(calls) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


def _stream(fmt: str, text: str, rng: random.Random) -> tuple[str, list[tuple[str, dict]]]:
    parser = tool_call_parser(fmt, TOOLS)
    deltas = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 7)
        deltas += parser.feed(text[i:i + n])
        i += n
    deltas += parser.finish()
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    calls: list[list] = []  # OpenAI's streaming shape: a call's first delta has its name
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            if d.id is not None:
                assert d.index == len(calls)
                calls.append([d.name, ""])
            calls[d.index][1] += d.arguments
    return content, [(name, json.loads(args)) for name, args in calls]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SAMPLES)])
def test_parse_and_stream(fmt, text, content, calls):
    got_content, got_calls = tool_call_parser(fmt, TOOLS).parse(text)
    assert (got_content, _calls(got_calls)) == (content, calls)
    rng = random.Random(fmt + text)
    for _ in range(20):
        streamed, streamed_calls = _stream(fmt, text, rng)
        assert (streamed.strip() or None if calls else streamed) == content
        assert streamed_calls == calls


@pytest.mark.parametrize(("fmt", "text", "content"), [
    ("functionary_v3_2", 'all\nHi.>>>get_weather\n{"city": "Paris"}', 'Hi.>>>get_weather\n{"city": "Paris"}'),
    ("functionary_v3_2", 'get_weather\n{"city": "Paris"}', 'get_weather\n{"city": "Paris"}'),
    ("harmony", SAMPLES[10][1], '{"city":"Paris"}'),
])
def test_whole_output_formats_make_no_calls_without_tools(fmt, text, content):
    """tool_choice "none" (no callable tools): a call in the format is content, streamed or not."""
    assert tool_call_parser(fmt, None).parse(text) == (content, [])
    parser = tool_call_parser(fmt, None)
    deltas = [d for i in range(0, len(text), 2) for d in parser.feed(text[i:i + 2])] + parser.finish()
    assert not any(isinstance(d, ToolCallDelta) for d in deltas)
    assert "".join(d.text for d in deltas if isinstance(d, ContentDelta)) == content


def test_harmony_analysis_is_reasoning():
    text = SAMPLES[10][1]
    parser = tool_call_parser("harmony", TOOLS)
    deltas = [d for i in range(0, len(text), 3) for d in parser.feed(text[i:i + 3])] + parser.finish()
    assert "".join(d.text for d in deltas if isinstance(d, ReasoningDelta)) == "Need the weather."
    assert not any(isinstance(d, ContentDelta) for d in deltas)
    assert parser.calls[0].name == "get_weather"


@pytest.mark.parametrize("fmt", sorted({s[0] for s in SAMPLES}))
def test_plain_text_stays_content(fmt):
    assert tool_call_parser(fmt, TOOLS).parse(PLAIN) == (PLAIN, [])
    assert _stream(fmt, PLAIN, random.Random(1)) == (PLAIN, [])


EXPECTED_FORMATS = {
    "Qwen-Qwen3-0.6B.jinja": "hermes", "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes", "ibm-granite-granite-4.0.jinja": "hermes",
    "Qwen3-Coder.jinja": "qwen3_coder", "ByteDance-Seed-OSS.jinja": "seed_oss", "GLM-4.6.jinja": "glm45",
    "MiniMax-M2.jinja": "minimax_m2", "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3_json",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3_json", "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "unsloth-mistral-Devstral-Small-2507.jinja": "mistral", "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral",
    "openai-gpt-oss-120b.jinja": "harmony", "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "deepseek", "moonshotai-Kimi-K2.jinja": "kimi_k2",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": "command_r7b",
    "ibm-granite-granite-3.3-2B-Instruct.jinja": "granite", "NVIDIA-Nemotron-Nano-v2.jinja": "nemotron_v2",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "firefunction_v2",
    "meetkai-functionary-medium-v3.1.jinja": "functionary_v3_1", "LFM2-8B-A1B.jinja": "lfm2",
    "meetkai-functionary-medium-v3.2.jinja": "functionary_v3_2",
    "google-gemma-2-2b-it.jinja": None, "microsoft-Phi-3.5-mini-instruct.jinja": None,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMATS))
def test_detect_format_of_real_templates(name):
    path = SHARED_DIR / "templates" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/templates beside the checkout)")
    assert detect_tool_format(path.read_text(encoding="utf-8")) == EXPECTED_FORMATS[name]


# -- grammars: what a family's grammar accepts is what its parser reads as a call -------------

llguidance = pytest.importorskip("llguidance")
TOKENIZER = Path(__file__).resolve().parents[2] / "refserver" / "models" / "chat" / "tokenizer.json"
# the embedded model's added tokens (<tool_call> among them): grammars reference them as tokens
lltok_names = frozenset(t["content"] for t in json.loads(TOKENIZER.read_text())["added_tokens"])


@pytest.fixture(scope="module")
def lltok():
    return llguidance.LLTokenizer(str(TOKENIZER))


def accepts(lltok, constraint, text: str) -> bool:
    m = llguidance.LLMatcher(lltok, to_llguidance_grammar(constraint), log_level=0)
    assert not m.is_error(), m.get_error()
    ids = lltok.tokenize_str(text)
    return m.validate_tokens(ids) == len(ids) and m.consume_tokens(ids) and m.is_accepting()


def _call_text(fmt: str, calls: list[tuple[str, dict]]) -> str:
    return SYNTAX[fmt].write(calls)


@pytest.mark.parametrize("fmt", sorted(SYNTAX))
def test_required_grammar_accepts_what_the_parser_reads(fmt, lltok):
    one = [("get_weather", {"city": "Paris", "days": 3})]
    two = one + [("get_weather", {"city": "Rome"})]
    required = tools_constraint(TOOLS, "required", False, fmt=fmt, token_names=lltok_names)
    assert required.lazy_trigger is None
    assert accepts(lltok, required, _call_text(fmt, one))
    assert not accepts(lltok, required, "Paris is sunny.")
    assert not accepts(lltok, required, _call_text(fmt, [("get_wether", PARIS)]))
    assert not accepts(lltok, required, _call_text(fmt, two))
    parallel = tools_constraint(TOOLS, "required", True, fmt=fmt, token_names=lltok_names)
    assert accepts(lltok, parallel, _call_text(fmt, two))
    for calls in (one, two):
        content, parsed = tool_call_parser(fmt, TOOLS).parse(_call_text(fmt, calls))
        assert (content, _calls(parsed)) == (None, calls)


@pytest.mark.parametrize("fmt", sorted(SYNTAX))
def test_auto_grammar_is_lazy_from_the_trigger(fmt, lltok):
    auto = tools_constraint(TOOLS, "auto", False, fmt=fmt, token_names=lltok_names)
    text = _call_text(fmt, [W])
    if fmt == "functionary_v3_2":  # its trigger precedes a call (the prompt wrote the first one's)
        text = auto.lazy_trigger + text
    assert auto.lazy_trigger and text.startswith(auto.lazy_trigger)
    assert accepts(lltok, auto, text[len(auto.lazy_trigger):])


def test_formats_without_grammar_refuse_required():
    assert tools_constraint(TOOLS, "auto", fmt="lfm2") is None
    with pytest.raises(InvalidRequest, match="no grammar"):
        tools_constraint(TOOLS, "required", fmt="lfm2")
    with pytest.raises(InvalidRequest, match="none detected"):
        tools_constraint(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, fmt=None)


def test_forced_call_after_a_reasoning_block_the_prompt_opened(lltok):
    """A template that opens <think> in the prompt: a forced call comes after the block closes."""
    c = close_reasoning_first(tools_constraint(TOOLS, "required", fmt="deepseek", token_names=lltok_names),
                              "</think>", lltok_names)
    call = _call_text("deepseek", [W])
    assert accepts(lltok, c, "</think>\n\n" + call)
    assert not accepts(lltok, c, call)


@pytest.mark.parametrize(("fmt", "text"), [(s[0], s[1]) for s in SAMPLES if s[3]],
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SAMPLES) if s[3]])
def test_tool_choice_none_grammar_forbids_every_call(fmt, text, lltok):
    """tool_choice "none": the family's grammar rejects each of its call samples, accepts text."""
    assert set(CALL_MARKERS) == set(PARSERS)
    prefix = plain_answer_prefix(fmt, "...>>>")
    c = forbid_calls_constraint(CALL_MARKERS[fmt], lltok_names, prefix)
    assert not accepts(lltok, c, text)
    later = ">>>" + text if fmt == "functionary_v3_2" else text  # a call after text: its own ">>>"
    assert not accepts(lltok, c, prefix + "Sure. " + later)
    assert accepts(lltok, c, prefix + PLAIN)
    assert accepts(lltok, c, prefix + "a <|im_end|> b")  # added tokens other than markers pass


R7B_PLAN = "<|START_THINKING|>Plan: a < b.<|END_THINKING|>"


@pytest.mark.parametrize("fmt", ["command_r7b", "mistral", "seed_oss"])
def test_reasoning_in_family_markers_then_call(fmt):
    """A family's own reasoning block is reasoning, then its call is a call, in one chain."""
    start, end = reasoning_markers(fmt)
    text = f"{start}Plan: a < b.{end}" + _call_text(fmt, [W])
    for n in (1, 4, len(text)):
        chain = select_parsers(tools=True, tool_format=fmt, tool_defs=TOOLS, reasoning_format="auto",
                               reasoning_markers=(start, end))()
        deltas = [d for i in range(0, len(text), n) for d in chain.feed(text[i:i + n])] + chain.finish()
        assert "".join(d.text for d in deltas if isinstance(d, ReasoningDelta)) == "Plan: a < b."
        assert [d.name for d in deltas if isinstance(d, ToolCallStart)] == ["get_weather"]
        assert json.loads("".join(d.text for d in deltas if isinstance(d, ToolCallArgs))) == PARIS
        assert not "".join(d.text for d in deltas if isinstance(d, ContentDelta)).strip()


def test_forced_call_may_follow_a_reasoning_block(lltok):
    c = reasoning_first(tools_constraint(TOOLS, "required", fmt="command_r7b", token_names=lltok_names),
                        *reasoning_markers("command_r7b"), lltok_names)
    call = _call_text("command_r7b", [W])
    assert accepts(lltok, c, call)
    assert accepts(lltok, c, R7B_PLAN + call)
    assert not accepts(lltok, c, "<|START_THINKING|>Plan." + call)
    assert not accepts(lltok, c, R7B_PLAN)


def test_forced_call_after_a_reasoning_block_ended_by_a_token(lltok):
    """An end marker that is one added token of the vocabulary is matched as that token."""
    c = reasoning_first(tools_constraint(TOOLS, "required", fmt="command_r7b", token_names=lltok_names),
                        "<tool_call>", "</tool_call>", lltok_names)
    call = _call_text("command_r7b", [W])
    assert accepts(lltok, c, "<tool_call>Plan: a < b.</tool_call>" + call)
    assert accepts(lltok, c, call)
    assert not accepts(lltok, c, "<tool_call>Plan." + call)
