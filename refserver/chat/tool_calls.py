"""Tool-call parsing of generated text, streamed or not.

Format (Hermes / Qwen): `<tool_call>{"name": "f", "arguments": {...}}</tool_call>`,
several per turn, possibly separated by whitespace/newlines, optionally with newlines
inside the markers.  Parsers are pluggable (`ToolCallParser` protocol).

Streaming (`feed` / `finish`), `HermesToolCallParser`'s rules:
- Content outside calls is emitted as `ContentDelta`s; a tail that could be the start of
  the start marker is held back, so markers (whole or partial) never reach content.
  Whitespace-only text after a call is dropped (it is what separates calls).
- A call's first `ToolCallDelta` carries `id` ("call_" + 24 alphanumerics), type
  "function" and `name` (arguments ""), as soon as `{"name": "...", "arguments": ` has
  arrived; later deltas carry raw fragments of the arguments value only, up to the end of
  that JSON value (the outer `}` and the end marker are never emitted).
- When the call does not start with the name (e.g. arguments first), it is buffered until
  the end marker and then emitted as one delta with compact `json.dumps` arguments.
- `finish()`: an unterminated call whose text is already complete JSON is emitted as a
  call; an unterminated call whose header was already streamed stays a (truncated) call
  (finish_reason is then "length" when cut by the limit); any other unterminated call is
  dropped.  That last one is a refserver decision (CONTRACT §9 item 7: no tool-call markup
  in content after a cut-off call); llama.cpp returns it as content.  A terminated call
  whose text is not a JSON call is returned as content verbatim, markers included.
`parse(text)` runs the same machine over a whole text and returns (content or None, calls).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Protocol

from refserver.stream.deltas import TextDelta as ContentDelta  # content text: the core's own delta type
from refserver.stream.deltas import finish_reason_for  # noqa: F401 - re-exported

_ALNUM = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str

    @property
    def type(self) -> str | None:
        return "function" if self.id is not None else None

    def to_dict(self) -> dict:
        """OpenAI streaming shape: {index, id, type, function: {name, arguments}}."""
        fn: dict = {"arguments": self.arguments}
        if self.name is not None:
            fn = {"name": self.name, "arguments": self.arguments}
        d: dict = {"index": self.index}
        if self.id is not None:
            d["id"] = self.id
            d["type"] = "function"
        d["function"] = fn
        return d


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text

    def to_dict(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


Delta = ContentDelta | ToolCallDelta


class ToolCallParser(Protocol):
    def feed(self, text: str) -> list[Delta]: ...
    def finish(self) -> list[Delta]: ...
    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]: ...


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def _compact(args) -> str:
    return json.dumps(args, ensure_ascii=False)


class HermesToolCallParser:
    def __init__(self, start: str = "<tool_call>", end: str = "</tool_call>"):
        self.start, self.end = start, end
        self._buf = ""          # unprocessed text
        self._in_call = False
        self._index = 0         # index of the next/current call
        self._after_call = False  # only whitespace seen since the last call
        # current call (streaming mode)
        self._call_text = ""    # text after the start marker
        self._header = False    # header delta emitted
        self._cur_id = ""
        self._cur_name = ""
        self._pos = 0           # scan position inside _call_text (arguments value)
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._started = False   # a character of the value was seen
        self._done = False      # the arguments value is complete
        self._args: list[str] = []
        self.calls: list[ToolCall] = []

    # -- public API -----------------------------------------------------------------------
    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while True:
            if not self._in_call:
                if not self._step_content(out):
                    break
            elif not self._step_call(out):
                break
        return self._merge(out)

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._in_call:
            self._call_text += self._buf
            self._buf = ""
            if self._header:
                self._scan(out)
                self._close_call()
            else:
                self._finish_buffered(out, terminated=False)
        elif self._buf:
            if not (self._after_call and not self._buf.strip()):
                out.append(ContentDelta(self._buf))
            self._buf = ""
        return self._merge(out)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        p = HermesToolCallParser(self.start, self.end)
        deltas = p.feed(text) + p.finish()
        content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
        if p.calls:
            content = content.strip()
            return (content or None), list(p.calls)
        return content, []

    # -- content mode ---------------------------------------------------------------------
    def _emit_content(self, out: list[Delta], text: str) -> None:
        if not text:
            return
        if self._after_call:
            if not text.strip():
                return  # whitespace between calls: dropped
            text = text.lstrip()
            self._after_call = False
        out.append(ContentDelta(text))

    def _step_content(self, out: list[Delta]) -> bool:
        i = self._buf.find(self.start)
        if i >= 0:
            self._emit_content(out, self._buf[:i])
            self._buf = self._buf[i + len(self.start):]
            self._begin_call()
            return True
        keep = _partial_suffix(self._buf, self.start)
        if self._after_call:
            # hold whitespace after a call until we know whether content follows
            stripped = self._buf[:len(self._buf) - keep]
            if not stripped.strip():
                return False
        self._emit_content(out, self._buf[:len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]
        return False

    # -- call mode ------------------------------------------------------------------------
    def _begin_call(self) -> None:
        self._in_call = True
        self._call_text = ""
        self._header = False
        self._pos = self._depth = 0
        self._in_str = self._esc = self._started = self._done = False
        self._args = []

    def _step_call(self, out: list[Delta]) -> bool:
        self._call_text += self._buf
        self._buf = ""
        if not self._header:
            m = _HEADER.match(self._call_text)
            if m:
                try:
                    name = json.loads('"' + m.group(1) + '"')
                except ValueError:
                    name = m.group(1)
                self._cur_id, self._cur_name = new_tool_call_id(), name
                self._header = True
                self._pos = m.end()
                out.append(ToolCallDelta(self._index, self._cur_id, name, ""))
            else:
                j = self._call_text.find(self.end)
                if j < 0:
                    return False
                rest = self._call_text[j + len(self.end):]
                self._call_text = self._call_text[:j]
                self._finish_buffered(out, terminated=True)
                self._buf = rest + self._buf
                return True
        ended_at = self._scan(out)
        if ended_at is None:
            return False
        self._buf = self._call_text[ended_at:] + self._buf
        self._close_call()
        return True

    def _scan(self, out: list[Delta]) -> int | None:
        """Advance through the arguments value, emitting its text; return the position just
        after the end marker once the call is over, else None (need more text)."""
        t = self._call_text
        i = self._pos
        frag_start = i
        while i < len(t) and not self._done:
            c = t[i]
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif c == "\\":
                    self._esc = True
                elif c == '"':
                    self._in_str = False
                    if self._depth == 0:
                        self._done = True
            elif c == "<":
                break  # the end marker (or junk) inside an unfinished value
            elif c in "{[":
                self._depth += 1
                self._started = True
            elif c in "}]":
                if self._depth == 0:  # primitive value ended by the outer "}"
                    self._done = True
                    break
                self._depth -= 1
                if self._depth == 0:
                    self._done = True
            elif c == '"':
                self._in_str = True
                self._started = True
            elif c.isspace():
                if self._started and self._depth == 0:
                    self._done = True
                    break
            elif c == ",":
                if self._depth == 0:
                    self._done = True
                    break
            else:
                self._started = True
            i += 1
        if i > frag_start:
            frag = t[frag_start:i]
            if not self._started:
                frag = frag.lstrip()
            if frag:
                self._args.append(frag)
                out.append(ToolCallDelta(self._index, None, None, frag))
        self._pos = i
        j = t.find(self.end, i)
        if j >= 0 and (self._done or (not self._in_str and j == i)):
            return j + len(self.end)
        return None

    def _close_call(self) -> None:
        raw = "".join(self._args).strip()
        try:
            args = _compact(json.loads(raw)) if raw else "{}"
        except ValueError:
            args = raw
        self.calls.append(ToolCall(self._cur_id, self._cur_name, args))
        self._index += 1
        self._in_call = False
        self._after_call = True

    def _finish_buffered(self, out: list[Delta], terminated: bool) -> None:
        text = self._call_text
        self._in_call = False
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    pass
            args_text = args if isinstance(args, str) else _compact(args)
            call = ToolCall(new_tool_call_id(), obj["name"], args_text)
            self.calls.append(call)
            out.append(ToolCallDelta(self._index, call.id, call.name, args_text))
            self._index += 1
            self._after_call = True
            return
        self._after_call = False
        if terminated:  # a malformed but complete call stays visible as text
            out.append(ContentDelta(self.start + text + self.end))
        # An unterminated call cut off before its JSON was complete (max_tokens) is dropped:
        # markup never leaks into content, and finish_reason says "length".

    @staticmethod
    def _merge(out: list[Delta]) -> list[Delta]:
        """Join adjacent content deltas and adjacent argument fragments of one call."""
        merged: list[Delta] = []
        for d in out:
            prev = merged[-1] if merged else None
            if isinstance(d, ContentDelta) and isinstance(prev, ContentDelta):
                merged[-1] = ContentDelta(prev.text + d.text)
            elif (isinstance(d, ToolCallDelta) and isinstance(prev, ToolCallDelta)
                  and d.index == prev.index and d.id is None):
                merged[-1] = ToolCallDelta(prev.index, prev.id, prev.name, prev.arguments + d.arguments)
            else:
                merged.append(d)
        return merged
