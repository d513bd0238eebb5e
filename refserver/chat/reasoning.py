"""Reasoning ("thinking") split off generated text, streamed or not.

Format (DeepSeek-R1 / Qwen3, llama.cpp's `--reasoning-format deepseek`): the output opens
with `<think>` (after optional whitespace), reasons, closes with `</think>`, then answers.
A template may open the block itself at the end of the generation prompt; the parser then
starts inside it (`opened_by_prompt`).  Rules, with the protocol of `tool_calls.py`
(`feed` / `finish` / `parse`):
- Reasoning comes only first: output that does not open with the start marker is all
  content, passed through untouched.
- Markers (whole or partial) never reach either stream: a tail that could be the start of
  a marker is held back until the next text decides it.
- Whitespace right after the start marker and between `</think>` and the answer is
  dropped; a block never closed (cut by max_tokens) stays reasoning.
`ReasoningDelta`s carry reasoning text; `TextDelta`s carry the rest, which a `ParserChain`
feeds on to the tool-call parser.  `in_block` tells whether the text fed last ended inside
the block (the core counts such tokens as reasoning tokens).
"""

from __future__ import annotations

from refserver.stream.deltas import ReasoningDelta, TextDelta

from .tool_calls import _partial_suffix

THINK_START, THINK_END = "<think>", "</think>"


def opened_by_prompt(prompt: str, start: str = THINK_START) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block (a template that
    writes the start marker after the assistant header)."""
    return prompt.rstrip().endswith(start)


class ReasoningParser:
    def __init__(self, in_reasoning: bool = False, start: str = THINK_START, end: str = THINK_END):
        self.start, self.end = start, end
        self._opened_by_prompt = in_reasoning
        self._state = "reasoning" if in_reasoning else "head"  # head | reasoning | gap | content
        self._buf = ""
        self._lead = in_reasoning  # strip whitespace at the start of the reasoning
        self.reasoning = ""  # all reasoning text so far

    @property
    def in_block(self) -> bool:
        """Inside the reasoning block (its text counts as reasoning tokens)."""
        return self._state == "reasoning"

    def feed(self, text: str) -> list[TextDelta | ReasoningDelta]:
        self._buf += text
        out: list[TextDelta | ReasoningDelta] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[TextDelta | ReasoningDelta]:
        out: list[TextDelta | ReasoningDelta] = []
        rest, self._buf = self._buf, ""
        if self._state == "head":
            self._content(out, rest)  # too short to be a marker: plain content
        elif self._state == "reasoning":
            self._reason(out, rest)  # an unclosed block stays reasoning
        elif self._state == "content":
            self._content(out, rest)
        self._state = "content"
        return out

    def parse(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a whole output."""
        p = ReasoningParser(self._opened_by_prompt, self.start, self.end)
        deltas = p.feed(text) + p.finish()
        content = "".join(d.text for d in deltas if isinstance(d, TextDelta))
        return (p.reasoning or None), content

    # -- states ---------------------------------------------------------------------------
    def _step(self, out: list) -> bool:
        """Consume what the buffer decides; True when the state changed and the rest of the
        buffer needs another look."""
        if self._state == "head":
            head = self._buf.lstrip()
            if head.startswith(self.start):
                self._buf = head[len(self.start):]
                self._state, self._lead = "reasoning", True
                return True
            if self.start.startswith(head):
                return False  # still could be the marker
            self._state = "content"
            return True
        if self._state == "reasoning":
            i = self._buf.find(self.end)
            if i >= 0:
                self._reason(out, self._buf[:i])
                self._buf = self._buf[i + len(self.end):]
                self._state = "gap"
                return True
            keep = _partial_suffix(self._buf, self.end)
            self._reason(out, self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return False
        if self._state == "gap":
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._state = "content"
            return True
        self._content(out, self._buf)
        self._buf = ""
        return False

    def _reason(self, out: list, text: str) -> None:
        if self._lead:
            text = text.lstrip()
            self._lead = not text
        if text:
            self.reasoning += text
            out.append(ReasoningDelta(text))

    @staticmethod
    def _content(out: list, text: str) -> None:
        if text:
            out.append(TextDelta(text))
