"""Output parsers: generated text → `TextDelta` / `ReasoningDelta` / tool-call deltas.

A parser has the protocol `feed(text) -> list[ParsedDelta]`, `finish() -> list[ParsedDelta]`
(end of generation: release or settle what is held back) and `parse(text)` (a whole text
at once, for callers outside a stream).  Parsers chain: `ParserChain` feeds the text to the
first one and only the `TextDelta`s it lets through to the next, so a reasoning parser
placed first keeps `<think>` text away from the tool-call parser.

`select_parsers` is the one place that decides which parsers a request gets; a new
tool-call format or a reasoning format is added there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from refserver.chat.formats import PARSERS
from refserver.chat.reasoning import THINK_END, THINK_START, ReasoningParser
from refserver.chat.tool_calls import ToolCallDelta

from .deltas import ParsedDelta, TextDelta, ToolCallArgs, ToolCallStart


class OutputParser(Protocol):
    def feed(self, text: str) -> list[Any]: ...
    def finish(self) -> list[Any]: ...


def as_parsed(deltas: list[Any]) -> list[ParsedDelta]:
    """A parser's output in the core's delta types (a tool-call parser's `ToolCallDelta`
    becomes `ToolCallStart` + `ToolCallArgs`; empty text is dropped)."""
    out: list[ParsedDelta] = []
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            if d.id is not None:
                out.append(ToolCallStart(d.index, d.id, d.name or ""))
            if d.arguments:
                out.append(ToolCallArgs(d.index, d.arguments))
        elif not isinstance(d, TextDelta) or d.text:
            out.append(d)
    return out


class ParserChain:
    """Parsers applied in order; each sees only the text the previous one left as text."""

    def __init__(self, parsers: list[OutputParser]):
        self.parsers = parsers

    @property
    def in_reasoning(self) -> bool:
        """The text fed last ended inside a reasoning block (its tokens are reasoning tokens)."""
        return any(getattr(p, "in_block", False) for p in self.parsers)

    def feed(self, text: str) -> list[ParsedDelta]:
        return self._run([TextDelta(text)] if text else [], final=False)

    def finish(self) -> list[ParsedDelta]:
        return self._run([], final=True)

    def _run(self, deltas: list[ParsedDelta], final: bool) -> list[ParsedDelta]:
        for parser in self.parsers:
            out: list[ParsedDelta] = []
            for d in deltas:
                out += as_parsed(parser.feed(d.text)) if isinstance(d, TextDelta) else [d]
            if final:
                out += as_parsed(parser.finish())
            deltas = out
        return deltas


# tool-call formats by name (refserver.chat.formats); a maker takes the request's tools
TOOL_CALL_FORMATS: dict[str, Callable[[list | None], OutputParser]] = PARSERS
# Reasoning parsers are made with whether the prompt itself opened the reasoning block and
# the block's (start, end) markers; llama.cpp's --reasoning-format names ("none" leaves
# reasoning in content).
REASONING_FORMATS: dict[str, Callable[[bool, str, str], OutputParser]] = {"deepseek": ReasoningParser,
                                                                 "auto": ReasoningParser}


def select_parsers(*, tools: bool = False, tool_format: str = "hermes", tool_defs: list | None = None,
                   reasoning_format: str | None = None, reasoning_opened: bool = False,
                   reasoning_markers: tuple[str, str] = (THINK_START, THINK_END)) -> Callable[[], ParserChain]:
    """A factory of one request's per-choice parser chain: reasoning first (when the format
    is known; `reasoning_opened` when the prompt ends inside the block; the family's block
    markers), then tool calls
    (when the request lets the model call tools) in the chat template's format, given the
    request's tools (`tool_defs`: the XML formats read parameter types from them)."""
    makers: list[Callable[[], OutputParser]] = []
    if reasoning_format in REASONING_FORMATS:
        make_reasoning = REASONING_FORMATS[reasoning_format]
        makers.append(lambda: make_reasoning(reasoning_opened, *reasoning_markers))
    if tools:
        make_tool_parser = TOOL_CALL_FORMATS[tool_format]
        makers.append(lambda: make_tool_parser(tool_defs))
    return lambda: ParserChain([make() for make in makers])
