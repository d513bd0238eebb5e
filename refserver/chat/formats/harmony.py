"""gpt-oss "harmony" output: messages `<|channel|>CHANNEL[ to=RECIPIENT][<|constrain|>json]
<|message|>TEXT` ended by `<|end|>`, `<|call|>` or `<|return|>`, the later ones opened by
`<|start|>assistant` (the prompt opens the first). The `final` channel (and text outside any
header, and a `commentary` message to no one) is content; a message to `functions.NAME` is a
call of NAME with TEXT as its JSON arguments (when the request lets the model call tools;
with `tools` None, tool_choice "none", TEXT is content); the `analysis` channel is reasoning
(`ReasoningDelta`s, also collected in `reasoning`).
Same protocol and rules as `BlockToolCallParser`: markup never reaches content.
"""

from __future__ import annotations

import re

from refserver.chat.tool_calls import (
    ContentDelta,
    Delta,
    HermesToolCallParser,
    ToolCall,
    ToolCallDelta,
    new_tool_call_id,
)
from refserver.stream.deltas import ReasoningDelta

from .block import StepParser, args_text, json_prefix

_HEADS = ("<|start|>", "<|channel|>")
_ENDS = ("<|end|>", "<|call|>", "<|return|>")
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


class HarmonyParser(StepParser):
    def __init__(self, tools: list | None = None):
        super().__init__(tools)
        self._state = "between"  # between | header | body
        self._channel = "final"
        self._recipient: str | None = None
        self._body = ""
        self.reasoning = ""

    def finish(self) -> list[Delta | ReasoningDelta]:
        out: list[Delta] = []
        if self._state == "body":
            self._text(out, self._buf)
            self._end_message(out)
        elif self._state == "between" and self._buf:
            self._channel, self._recipient = "final", None
            self._text(out, self._buf)
        self._buf, self._state = "", "between"  # an unfinished header is markup: dropped
        return HermesToolCallParser._merge(out)

    def _took(self, parsed: StepParser) -> None:
        self.reasoning = parsed.reasoning  # the non-streamed answer's reasoning

    # -- machine --------------------------------------------------------------------------
    def _step(self, out: list) -> bool:
        if self._state == "between":
            stripped = self._buf.lstrip()
            if any(stripped.startswith(h) for h in _HEADS):
                self._buf, self._state = stripped, "header"
                return True
            if any(h.startswith(stripped) for h in _HEADS):
                return False  # too short to tell
            self._state, self._channel, self._recipient = "body", "final", None
            return True
        if self._state == "header":
            i = self._buf.find("<|message|>")
            if i < 0:
                return False
            header, self._buf = self._buf[:i], self._buf[i + len("<|message|>"):]
            channel = _CHANNEL.search(header)
            recipient = _RECIPIENT.search(header)
            self._channel = channel.group(1) if channel else "final"
            self._recipient = recipient.group(1) if recipient else None
            self._state, self._body = "body", ""
            return True
        ends = [(self._buf.find(e), e) for e in _ENDS]
        ends = [(i, e) for i, e in ends if i >= 0]
        if ends:
            i, marker = min(ends)
            self._text(out, self._buf[:i])
            self._buf = self._buf[i + len(marker):]
            self._end_message(out)
            self._state = "between"
            return True
        if any(self._buf.find(h) >= 0 for h in _HEADS):  # a new message without an end marker
            i = min(j for j in (self._buf.find(h) for h in _HEADS) if j >= 0)
            self._text(out, self._buf[:i])
            self._buf = self._buf[i:]
            self._end_message(out)
            self._state = "between"
            return True
        cut = self._buf.rfind("<")
        keep = len(self._buf) - cut if cut >= 0 and ">" not in self._buf[cut:] else 0
        self._text(out, self._buf[:len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]
        return False

    def _text(self, out: list, text: str) -> None:
        if not text:
            return
        if self._recipient is not None:
            self._body += text
        elif self._channel == "analysis":
            self.reasoning += text
            out.append(ReasoningDelta(text))
        else:
            out.append(ContentDelta(text))

    def _end_message(self, out: list[Delta]) -> None:
        to_function = self._recipient is not None and self._recipient.startswith("functions.")
        if to_function and self.tools is None:
            if self._body:
                out.append(ContentDelta(self._body))
        elif to_function:
            name = self._recipient.removeprefix("functions.")
            found = json_prefix(self._body)
            args = args_text(found[0]) if found and not found[1].strip() else self._body.strip()
            call = ToolCall(new_tool_call_id(), name, args)
            out.append(ToolCallDelta(len(self.calls), call.id, call.name, call.arguments))
            self.calls.append(call)
        self._recipient, self._body, self._channel = None, "", "final"
