"""functionary v3.2 output: messages `>>>RECIPIENT\\nBODY`, one after another.

The generation prompt ends with `>>>`, so the first message's recipient opens the output
(a leading `>>>` is accepted too).  Recipient `all`: BODY is content, streamed as it comes;
any other word: a call of that function with BODY as its JSON arguments -- for `python`,
BODY may also be raw code, which becomes `{"code": BODY}` (as llama.cpp reads it).  A call
message runs to the next `>>>` or the end of the output.
Rules, with the protocol and conventions of `BlockToolCallParser` (`.block`):
- `>>>` (whole or partial) and the `all` header never reach content.
- Text that does not open with a `WORD\\n` header, and a call message when the request lets
  the model call no tools (`tools` None: tool_choice "none") or whose BODY is not a call,
  comes back as content as written (its `>>>` included when the model wrote one).
"""

from __future__ import annotations

import re

from refserver.chat.tool_calls import (
    ContentDelta,
    Delta,
    HermesToolCallParser,
    ToolCall,
    ToolCallDelta,
    _partial_suffix,
    new_tool_call_id,
)

from .block import Call, StepParser, args_text, json_prefix

SEP = ">>>"
CONTENT_RECIPIENT = "all"
_WORD = re.compile(r"\w*")


class FunctionaryV32Parser(StepParser):
    def __init__(self, tools: list | None = None):
        super().__init__(tools)
        self._state = "head"   # head (a recipient line) | content | call
        self._marked = False   # the current message was opened by a ">>>" the model wrote
        self._name = ""
        self._after_call = False

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._state == "call":
            self._end_call(out, self._buf)
        elif self._state == "head":
            self._content(out, (SEP if self._marked else "") + self._buf)
        else:
            self._content(out, self._buf)
        self._buf, self._state = "", "content"
        return HermesToolCallParser._merge(out)

    # -- machine --------------------------------------------------------------------------
    def _step(self, out: list[Delta]) -> bool:
        if self._state == "head":
            return self._head(out)
        i = self._buf.find(SEP)
        if self._state == "call":
            if i < 0:
                return False
            self._end_call(out, self._buf[:i])
        else:
            keep = len(self._buf) - i if i >= 0 else _partial_suffix(self._buf, SEP)
            self._content(out, self._buf[:len(self._buf) - keep])
            if i < 0:
                self._buf = self._buf[len(self._buf) - keep:]
                return False
        self._buf, self._state, self._marked = self._buf[i + len(SEP):], "head", True
        return True

    def _head(self, out: list[Delta]) -> bool:
        """A message's recipient line: decided once its newline (or a non-word) arrives."""
        if not self._marked and self._buf.startswith(SEP):
            self._buf, self._marked = self._buf[len(SEP):], True
        elif not self._marked and SEP.startswith(self._buf):
            return False  # a leading ">>>" may be arriving
        word = _WORD.match(self._buf).group()
        if len(word) == len(self._buf):
            return False
        if self._buf[len(word)] == "\n" and word:
            self._buf = self._buf[len(word) + 1:]
            self._state, self._name = ("content", "") if word == CONTENT_RECIPIENT else ("call", word)
            return True
        if self._marked:  # not a header: what the model wrote is content
            self._buf = SEP + self._buf
        self._state = "content"
        return True

    def _call(self, body: str) -> Call | None:
        if self.tools is None:
            return None
        found = json_prefix(body)
        if found is not None and isinstance(found[0], dict) and not found[1].strip():
            return self._name, found[0]
        if self._name == "python" and not body.lstrip().startswith("{") and body.strip():
            return self._name, {"code": body.strip()}
        return None

    def _end_call(self, out: list[Delta], body: str) -> None:
        call = self._call(body)
        if call is None:
            self._content(out, (SEP if self._marked else "") + self._name + "\n" + body)
            return
        tc = ToolCall(new_tool_call_id(), call[0], args_text(call[1]))
        out.append(ToolCallDelta(len(self.calls), tc.id, tc.name, tc.arguments))
        self.calls.append(tc)
        self._after_call = True

    def _content(self, out: list[Delta], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            out.append(ContentDelta(text))
