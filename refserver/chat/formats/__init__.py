"""Tool-call output formats per model family, and which one a chat template implies.

`detect_tool_format(source)` is the one place a template's format is decided (by markers in
its text, as llama.cpp does); `tool_call_parser(fmt, tools)` makes a parser for it, with the
`ToolCallParser` protocol of `refserver.chat.tool_calls`. A template with no known format
gets None: its output is plain content.
"""

from __future__ import annotations

from collections.abc import Callable

from refserver.chat.tool_calls import HermesToolCallParser, ToolCallParser

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

# formats that structure every answer (channels), parsed with or without tools
WHOLE_OUTPUT = frozenset({"harmony"})

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
