"""The typed deltas one choice's engine events become (see `refserver.stream`).

Every renderer (chat, `/v1/completions`, native `/completion`, Responses, Messages) reads
these and nothing else of the engine's events, so what a streamed response carries and what
a non-streamed one carries are the same values folded differently.

Order within one choice: `ProgressDelta`s (prompt processing), then per generated token one
`TokenDelta` followed by the parsed deltas its text produced (`TextDelta`,
`ReasoningDelta`, `ToolCallStart`, `ToolCallArgs`; possibly none while text is held back),
then the parsed deltas of the released tail and of the parsers' `finish()`, and last one
`FinishDelta`.
"""

from __future__ import annotations

from dataclasses import dataclass

from refserver.engine.types import Finished, Progress, TokenProbs


@dataclass(frozen=True)
class ProgressDelta:
    """Prompt processing progress (sent only when the request asked for `return_progress`)."""

    progress: Progress


@dataclass(frozen=True)
class PromptProbsDelta:
    """The prompt's own tokens' log-probabilities, before any generated token (a request
    with `prompt_logprobs`: `/v1/completions` with `echo` and `logprobs`); the first is None."""

    entries: tuple[TokenProbs | None, ...]


@dataclass(frozen=True)
class TokenDelta:
    """One generated token, EOS and tool-call markup included: the logprob policy is one
    `TokenDelta` (and so one logprob entry when `probs` is set) per generated token.

    `text` is the raw text this token released after stop-string and UTF-8 hold-back,
    before any output parser (native `/completion` and `/v1/completions` show it as is).
    """

    token: int
    text: str
    probs: TokenProbs | None = None
    timings: dict | None = None


@dataclass(frozen=True)
class TextDelta:
    """Visible answer text (content) after the output parsers."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning text (a reasoning parser's `<think>` part), kept out of content."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call begins: `index` counts the choice's calls from 0."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgs:
    """A raw fragment of call `index`'s JSON arguments; the fragments joined are the
    arguments text."""

    index: int
    text: str


@dataclass(frozen=True)
class FinishDelta:
    """The choice's end: the engine's `Finished` (counts, timings, seed, slot) and whether
    any tool call was made (which turns a natural stop into "tool_calls")."""

    finished: Finished
    has_tool_calls: bool

    @property
    def reason(self) -> str:
        """OpenAI's finish_reason: "length", "tool_calls" or "stop"."""
        return finish_reason_for(self.finished.stop_type, self.has_tool_calls)


ParsedDelta = TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgs
Delta = ProgressDelta | PromptProbsDelta | TokenDelta | ParsedDelta | FinishDelta


def finish_reason_for(stop_type: str, has_tool_calls: bool) -> str:
    """OpenAI finish_reason from the engine's stop_type ("eos" | "limit" | "word" | "none")."""
    if stop_type == "limit":
        return "length"
    if has_tool_calls and stop_type in ("eos", "word"):
        return "tool_calls"
    return "stop"
