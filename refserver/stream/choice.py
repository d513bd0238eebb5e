"""One choice's engine events → deltas (`ChoiceStream.feed`), folded as they pass into
the choice's non-streamed result (`ChoiceResult`), and OpenAI-style usage counts.

Streamed responses render the deltas `feed` returns; non-streamed ones render the fold
of the very same deltas, so both carry the same text, tool calls, finish reason, usage and
logprob entries (one per generated token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refserver.engine.types import Finished, GenerationRequest, Progress, PromptProbs, TokenOut, TokenProbs

from .deltas import (
    Delta,
    FinishDelta,
    ProgressDelta,
    PromptProbsDelta,
    ReasoningDelta,
    TextDelta,
    TokenDelta,
    ToolCallArgs,
    ToolCallStart,
)
from .parsers import ParserChain


@dataclass
class ToolCallResult:
    id: str
    name: str
    arguments: str = ""  # the ToolCallArgs fragments joined


@dataclass
class ChoiceResult:
    """Everything one choice produced, folded from its deltas."""

    raw: list[str] = field(default_factory=list)  # TokenDelta texts + the released tail (unparsed)
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallResult] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenProbs] = field(default_factory=list)
    prompt_logprobs: tuple[TokenProbs | None, ...] = ()
    finish: FinishDelta | None = None
    reasoning_tokens: int = 0  # tokens generated inside the reasoning block, its markers included

    def add(self, d: Delta) -> None:
        if isinstance(d, TokenDelta):
            self.tokens.append(d.token)
            self.raw.append(d.text)
            if d.probs is not None:
                self.logprobs.append(d.probs)
        elif isinstance(d, TextDelta):
            self.text.append(d.text)
        elif isinstance(d, ReasoningDelta):
            self.reasoning.append(d.text)
        elif isinstance(d, ToolCallStart):
            self.tool_calls.append(ToolCallResult(d.id, d.name))
        elif isinstance(d, ToolCallArgs):
            self.tool_calls[-1].arguments += d.text
        elif isinstance(d, FinishDelta):
            self.raw.append(d.finished.text)
            self.finish = d
        elif isinstance(d, PromptProbsDelta):
            self.prompt_logprobs = d.entries

    @property
    def content(self) -> str:
        """The parsed answer text (without reasoning and tool-call markup)."""
        return "".join(self.text)

    @property
    def raw_text(self) -> str:
        """Everything generated, before parsing (native `/completion`'s `content`)."""
        return "".join(self.raw)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def finished(self) -> Finished | None:
        return self.finish.finished if self.finish is not None else None


class ChoiceStream:
    """One engine request's events → deltas, through the request's output parsers."""

    def __init__(self, index: int, request: GenerationRequest, parsers: ParserChain | None = None,
                 group: int = 0):
        self.index = index
        self.request = request
        self.group = group  # choices generated from one prompt share a group (usage counts it once)
        self.parsers = parsers
        self.result = ChoiceResult()
        self.id_slot = -1

    def feed(self, event: Progress | PromptProbs | TokenOut | Finished) -> list[Delta]:
        """The deltas of one engine event (already folded into `result`)."""
        if isinstance(event, Progress):
            out: list[Delta] = [ProgressDelta(event)]
        elif isinstance(event, PromptProbs):
            out = [PromptProbsDelta(event.entries)]
        elif isinstance(event, TokenOut):
            before = self.parsers is not None and self.parsers.in_reasoning
            out = [TokenDelta(event.token, event.text, event.probs, event.timings), *self._parse(event.text)]
            if before or (self.parsers is not None and self.parsers.in_reasoning):
                self.result.reasoning_tokens += 1
        else:
            self.id_slot = event.id_slot
            out = [*self._parse(event.text), *self._parse_end()]
            has_calls = bool(self.result.tool_calls) or any(isinstance(d, ToolCallStart) for d in out)
            out.append(FinishDelta(event, has_calls))
        for d in out:
            self.result.add(d)
        return out

    def _parse(self, text: str) -> list[Delta]:
        if self.parsers is None:
            return [TextDelta(text)] if text else []
        return list(self.parsers.feed(text))

    def _parse_end(self) -> list[Delta]:
        return list(self.parsers.finish()) if self.parsers is not None else []

    @property
    def n_tokens(self) -> int:
        return len(self.result.tokens)

    @property
    def finished(self) -> Finished | None:
        return self.result.finished


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int = 0

    def to_openai(self) -> dict:
        return {"completion_tokens": self.completion_tokens, "prompt_tokens": self.prompt_tokens,
                "total_tokens": self.completion_tokens + self.prompt_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens}}


def usage(choices: list[ChoiceStream]) -> Usage:
    """Token counts of the finished choices; a prompt shared by n choices counts once."""
    seen: set[int] = set()
    prompt = cached = completion = reasoning = 0
    for c in choices:
        fin = c.finished
        if fin is None:
            continue
        completion += fin.tokens_predicted
        reasoning += c.result.reasoning_tokens
        if c.group in seen:
            continue
        seen.add(c.group)
        prompt += fin.tokens_evaluated
        cached += int(fin.timings.get("cache_n", 0))
    return Usage(prompt, completion, cached, reasoning)
