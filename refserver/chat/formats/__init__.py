"""Tool-call output formats per model family, and which one a chat template implies.

`detect_tool_format(source)` is the one place a template's format is decided (by markers in
its text, as llama.cpp does); `tool_call_parser(fmt, tools)` makes a parser for it, with the
`ToolCallParser` protocol of `refserver.chat.tool_calls`. A template with no known format
gets None: its output is plain content.
"""

from __future__ import annotations

from collections.abc import Callable

from refserver.chat.reasoning import THINK_END, THINK_START
from refserver.chat.tool_calls import HermesToolCallParser, ToolCallParser

from .functionary import FunctionaryV32Parser
from .harmony import HarmonyParser
from .json_calls import (
    CommandR7BParser,
    DeepSeekParser,
    FirefunctionParser,
    FunctionaryV31Parser,
    GraniteParser,
    KimiK2Parser,
    Lfm2Parser,
    MistralParser,
    NemotronV2Parser,
)
from .llama3 import Llama3JsonParser
from .xml_calls import Glm45Parser, MiniMaxM2Parser, Qwen3CoderParser, SeedOssParser

PARSERS: dict[str, Callable[[list | None], ToolCallParser]] = {
    "hermes": lambda tools: HermesToolCallParser(),
    "qwen3_coder": Qwen3CoderParser,
    "seed_oss": SeedOssParser,
    "minimax_m2": MiniMaxM2Parser,
    "nemotron_v2": NemotronV2Parser,
    "functionary_v3_1": FunctionaryV31Parser,
    "functionary_v3_2": FunctionaryV32Parser,
    "lfm2": Lfm2Parser,
    "glm45": Glm45Parser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
    "harmony": HarmonyParser,
    "deepseek": DeepSeekParser,
    "kimi_k2": KimiK2Parser,
    "command_r7b": CommandR7BParser,
    "granite": GraniteParser,
    "firefunction_v2": FirefunctionParser,
}

# formats that structure every answer (channels, recipients), parsed with or without tools
# (without callable tools their parsers make no calls)
WHOLE_OUTPUT = frozenset({"harmony", "functionary_v3_2", "command_r7b"})

# reasoning blocks with their own markers (every other family uses <think>...</think>)
REASONING_MARKERS: dict[str, tuple[str, str]] = {
    "command_r7b": ("<|START_THINKING|>", "<|END_THINKING|>"), "seed_oss": ("<seed:think>", "</seed:think>"),
    "mistral": ("[THINK]", "[/THINK]"),
}
# families whose template asks the model to plan in its reasoning block before acting: a
# forced call (tool_choice required / named) may follow such a block
PLAN_FIRST = frozenset({"command_r7b"})


def reasoning_markers(fmt: str | None) -> tuple[str, str]:
    """(start, end) of the reasoning block of the family whose tool-call format is `fmt`."""
    return REASONING_MARKERS.get(fmt or "", (THINK_START, THINK_END))

# what opens a call in each format: tool_choice "none" keeps the model from writing these
CALL_MARKERS: dict[str, tuple[str, ...]] = {
    "hermes": ("<tool_call>",), "qwen3_coder": ("<tool_call>",), "glm45": ("<tool_call>",),
    "seed_oss": ("<seed:tool_call>",), "minimax_m2": ("<minimax:tool_call>",),
    "nemotron_v2": ("<TOOLCALL>",), "functionary_v3_1": ("<function=",), "functionary_v3_2": (">>>",),
    "lfm2": ("<|tool_call_start|>",), "llama3_json": ("<|python_tag|>", '{"name"'),
    "mistral": ("[TOOL_CALLS]",), "harmony": ("to=functions.",),
    "deepseek": ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>"),
    "kimi_k2": ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"),
    "command_r7b": ("<|START_ACTION|>",), "granite": ("<|tool_call|>",), "firefunction_v2": ("functools[",),
}


def plain_answer_prefix(fmt: str | None, prompt: str) -> str:
    """What an answer without calls opens with after `prompt`: functionary v3.2's prompt ends
    with `>>>`, so its plain answer starts with the `all` recipient."""
    return "all\n" if fmt == "functionary_v3_2" and prompt.endswith(">>>") else ""


# (format, markers that must all be in the template), most specific first
_SIGNS: list[tuple[str, tuple[str, ...]]] = [
    ("harmony", ("<|channel|>", "<|call|>")),
    ("deepseek", ("<｜tool▁calls▁begin｜>",)),
    ("kimi_k2", ("<|tool_calls_section_begin|>",)),
    ("glm45", ("<arg_key>",)),
    ("seed_oss", ("<seed:tool_call>",)),
    ("minimax_m2", ("<minimax:tool_call>",)),
    ("qwen3_coder", ("<function=", "<parameter=")),
    ("functionary_v3_1", ("<function=", "</function>")),
    ("functionary_v3_2", (">>>all",)),
    ("nemotron_v2", ("<TOOLCALL>",)),
    ("lfm2", ("<|tool_call_start|>",)),
    ("lfm2", ("<|tool_list_start|>",)),
    ("command_r7b", ("<|START_ACTION|>",)),
    ("mistral", ("[TOOL_CALLS]",)),
    ("granite", ("<|tool_call|>",)),
    ("firefunction_v2", ("functools[",)),
    ("hermes", ("<tool_call>",)),
    ("llama3_json", ("<|python_tag|>",)),
    ("llama3_json", ("<|start_header_id|>", '"parameters"')),
]


def detect_tool_format(source: str) -> str | None:
    """The tool-call format a template's model writes, from the template text; None if unknown."""
    for fmt, markers in _SIGNS:
        if all(m in source for m in markers):
            return fmt
    return None


def tool_call_parser(fmt: str, tools: list | None = None) -> ToolCallParser:
    """A fresh parser for one choice of one request."""
    return PARSERS[fmt](tools)
