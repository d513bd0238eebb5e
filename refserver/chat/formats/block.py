"""The shared machine of the tool-call formats whose calls sit in a marked block.

A format names its block's start marker (and end marker, or None when the block runs to the
end of the output) and parses a finished block's text into calls; this class does the
streaming, with the rules of `HermesToolCallParser` (`refserver.chat.tool_calls`):
- Text outside blocks is content; a tail that could be the start of the start marker is
  held back, so markup (whole or partial) never reaches content. Whitespace right after a
  call is dropped.
- Markup a format puts around plain answers (`drop`, e.g. Command-R7B's response markers)
  is removed from content.
- A block's calls are emitted when the block ends, each as one `ToolCallDelta` carrying id,
  name and the whole arguments (JSON text).
- A block whose text is not a call in the format comes back as content, markers included
  (nothing generated is lost) -- except an unterminated block of a format with an end
  marker (cut off by max_tokens), which is dropped.
`parse(text)` runs the same machine over a whole text, so streamed == non-streamed.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from refserver.chat.tool_calls import (
    ContentDelta,
    Delta,
    HermesToolCallParser,
    ToolCall,
    ToolCallDelta,
    _partial_suffix,
    new_tool_call_id,
)

Call = tuple[str, Any]  # (name, arguments as an object or JSON text)


def args_text(args: Any) -> str:
    """Arguments as the JSON text OpenAI's `function.arguments` holds."""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def json_prefix(text: str) -> tuple[Any, str] | None:
    """The JSON value at the start of `text` (after whitespace) and the text after it."""
    text = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return value, text[end:]


def param_types(tools: list | None) -> dict[str, dict[str, str]]:
    """{function name: {parameter: JSON schema type}} of the request's tools."""
    out: dict[str, dict[str, str]] = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            props = (fn.get("parameters") or {}).get("properties") or {}
            out[fn["name"]] = {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
    return out


def typed_value(text: str, schema_type: Any) -> Any:
    """An XML-style parameter value: kept as text where the schema says string (or the text
    is not JSON), else the JSON value it spells."""
    if schema_type == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


class StepParser:
    """A parser that is a state machine over a text buffer: `feed` steps it until it waits
    for more text, and `parse` (non-streamed) is a fresh parser fed the whole text, so the
    two modes cannot disagree.  Subclasses define `_step(out) -> bool` and `finish()`."""

    def __init__(self, tools: list | None = None):
        self.tools = tools
        self._buf = ""
        self.calls: list[ToolCall] = []

    def _step(self, out: list) -> bool:
        raise NotImplementedError

    def finish(self) -> list[Delta]:
        raise NotImplementedError

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while self._step(out):
            pass
        return HermesToolCallParser._merge(out)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        p = type(self)(self.tools)
        deltas = p.feed(text) + p.finish()
        content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
        self._took(p)
        if p.calls:
            return (content.strip() or None), list(p.calls)
        return content, []

    def _took(self, parsed: StepParser) -> None:
        """What `parse` keeps of the fresh parser besides content and calls (default: nothing)."""


class BlockToolCallParser(StepParser):
    start: ClassVar[str]
    end: ClassVar[str | None] = None
    drop: ClassVar[tuple[str, ...]] = ()  # markup around plain answers, removed from content

    def __init__(self, tools: list | None = None):
        super().__init__(tools)
        self._body = ""
        self._opened = ""        # the marker text that opened the current block
        self._in_block = False
        self._after_call = False
        self._emitted = False    # any content or call emitted yet

    # -- what a format defines ------------------------------------------------------------
    def parse_block(self, body: str) -> list[Call] | None:
        """The calls of a finished block's text (after the start marker, before the end
        marker), or None when the text is not a call in this format."""
        raise NotImplementedError

    def find_start(self, buf: str) -> tuple[int, int] | None:
        """(index, length) of the block's start in the buffer, or None."""
        i = buf.find(self.start)
        return (i, len(self.start)) if i >= 0 else None

    def held(self, buf: str) -> int:
        """How many trailing characters may be the start of a block or of dropped markup."""
        return max(_partial_suffix(buf, m) for m in (self.start, *self.drop))

    # -- protocol -------------------------------------------------------------------------
    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._in_block:
            self._body += self._buf
            self._buf = ""
            self._close(out, terminated=False)
        if self._buf:
            self._content(out, self._buf)
            self._buf = ""
        return HermesToolCallParser._merge(out)

    # -- machine --------------------------------------------------------------------------
    def _step(self, out: list[Delta]) -> bool:
        if self._in_block:
            self._body += self._buf
            self._buf = ""
            j = self._body.find(self.end) if self.end is not None else -1
            if j < 0:
                return False
            rest = self._body[j + len(self.end):]
            self._body = self._body[:j]
            self._close(out, terminated=True)
            self._buf = rest
            return True
        found = self.find_start(self._buf)
        if found is not None:
            i, n = found
            self._content(out, self._buf[:i])
            self._opened, self._body = self._buf[i:i + n], self._buf[i + n:]
            self._buf = ""
            self._in_block = True
            return True
        keep = self.held(self._buf)
        ready = self._buf[:len(self._buf) - keep]
        if self._after_call and not ready.strip():
            return False  # whitespace after a call: held until content (or the end) decides
        self._content(out, ready)
        self._buf = self._buf[len(ready):]
        return False

    def _content(self, out: list[Delta], text: str) -> None:
        for marker in self.drop:
            text = text.replace(marker, "")
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            self._emitted = True
            out.append(ContentDelta(text))

    def _close(self, out: list[Delta], terminated: bool) -> None:
        self._in_block = False
        try:
            calls = self.parse_block(self._body)
        except (ValueError, TypeError, KeyError, AttributeError):
            calls = None
        if calls:
            for name, args in calls:
                call = ToolCall(new_tool_call_id(), name, args_text(args))
                out.append(ToolCallDelta(len(self.calls), call.id, call.name, call.arguments))
                self.calls.append(call)
            self._after_call = self._emitted = True
        elif terminated or self.end is None:
            self._content(out, self._opened + self._body + (self.end if terminated and self.end else ""))
        self._body = ""
