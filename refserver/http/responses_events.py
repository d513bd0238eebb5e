"""One generation rendered as an OpenAI Responses object and its typed stream events.

`ResponseRenderer` takes a choice's deltas (`refserver.stream`: reasoning, text, tool-call
starts and argument fragments) and returns the events they cause, each with its `sequence_number`, in the
documented order: `response.created`, `response.in_progress`, then per output item
`output_item.added`, `content_part.added`, the `*.delta`s, their `*.done`,
`content_part.done`, `output_item.done`, and last `response.completed` (or
`.incomplete` when cut by max_output_tokens, `.failed` on an error).  A non-streamed
request runs the same renderer and returns `response()`, so both modes agree.

Logprobs (`include: ["message.output_text.logprobs"]`): each token's entry rides on the
`output_text.delta` that releases its text, so the deltas' entries joined are the `.done`
event's and the content part's, and their bytes joined are the text (OpenAI's use of
`bytes`).  Tokens outside the message's text have none: reasoning and function-call
tokens (those items carry no logprobs), the end token, a stop string that was cut.
A background response starts `queued` (`response.created`, `response.queued`), turns
`in_progress` when its generation's first event arrives, and may end `cancelled`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from refserver.engine.types import TokenProbs
from refserver.stream.deltas import ReasoningDelta, TextDelta, TokenDelta, ToolCallArgs, ToolCallStart

from .logprobs import oai_logprob

FINAL = ("completed", "incomplete", "failed", "cancelled")  # statuses a response ends in


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


class _Item:
    """An output item being streamed: reasoning, message or function_call."""

    def __init__(self, kind: str, index: int, call: ToolCallStart | None = None):
        self.kind, self.index = kind, index
        self.id = new_id({"reasoning": "rs_", "message": "msg_", "function_call": "fc_"}[kind])
        self.text = ""
        self.call = call
        self.logprobs: list[dict] = []  # a message's entries, one per token of its text
        self.status = "completed"  # once closed: "incomplete" when cancelled

    def part(self) -> dict:
        if self.kind == "reasoning":
            return {"type": "reasoning_text", "text": self.text}
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": list(self.logprobs)}

    def body(self, status: str) -> dict:
        if self.kind == "function_call":
            return {"id": self.id, "type": "function_call", "status": status, "call_id": self.call.id,
                    "name": self.call.name, "arguments": self.text}
        if self.kind == "reasoning":
            content = [self.part()] if status != "in_progress" else []
            return {"id": self.id, "type": "reasoning", "status": status, "summary": [], "content": content}
        content = [self.part()] if status != "in_progress" else []
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}


class ResponseRenderer:
    def __init__(self, echo: dict[str, Any], model: str, top_logprobs: int | None = None,
                 status: str = "in_progress"):
        """`echo`: the request fields a response object repeats (instructions, tools, ...);
        `top_logprobs`: None renders no logprobs, else the alternatives each entry lists;
        `status`: "queued" for a background response."""
        self.id = new_id("resp_")
        self.created_at = int(time.time())
        self.echo, self.model = echo, model
        self.top_n = top_logprobs
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.pending_space = ""  # whitespace-only content not yet worth a message item
        self.pending_probs: list[TokenProbs] = []  # tokens whose text no delta has carried yet
        self.status = status
        self.usage: dict | None = None
        self.error: dict | None = None
        self.completed_at: int | None = None

    # -- events ---------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict]:
        second = "response.queued" if self.status == "queued" else "response.in_progress"
        return [self._event("response.created", response=self.response()),
                self._event(second, response=self.response())]

    def deltas(self, deltas: list) -> list[dict]:
        """The events of a choice's deltas (progress and finish deltas add none; a token
        delta only its logprob entry, to the next text delta)."""
        out: list[dict] = []
        if self.status == "queued":
            self.status = "in_progress"
            out.append(self._event("response.in_progress", response=self.response()))
        for d in deltas:
            if isinstance(d, TokenDelta):
                if self.top_n is not None and d.probs is not None:
                    self.pending_probs.append(d.probs)
            elif isinstance(d, TextDelta):
                self._content(out, d.text)
            elif isinstance(d, ReasoningDelta):
                self.pending_probs.clear()
                self._ensure(out, "reasoning")
                out.append(self._text(self.open, d.text, "response.reasoning_text.delta"))
            elif isinstance(d, ToolCallStart):
                self.pending_probs.clear()
                self._close(out)
                self._add(out, _Item("function_call", len(self.items), d))
            elif isinstance(d, ToolCallArgs) and self.open is not None and self.open.kind == "function_call":
                self.pending_probs.clear()
                out.append(self._text(self.open, d.text, "response.function_call_arguments.delta"))
        return out

    def _content(self, out: list[dict], text: str) -> None:
        if self.open is None or self.open.kind != "message":
            if not (self.pending_space + text).strip():
                self.pending_space += text  # whitespace alone opens no message item
                return
            text, self.pending_space = self.pending_space + text, ""
        self._ensure(out, "message")
        out.append(self._text(self.open, text, "response.output_text.delta"))

    def finish(self, stop_type: str, usage: dict) -> list[dict]:
        out: list[dict] = []
        if self.pending_space and not self.items:
            self._ensure(out, "message")
            out.append(self._text(self.open, self.pending_space, "response.output_text.delta"))
        self._close(out)
        self.usage = usage
        self.status = "incomplete" if stop_type == "limit" else "completed"
        out.append(self._event(f"response.{self.status}", response=self.response()))
        return out

    def fail(self, message: str, code: str = "server_error") -> list[dict]:
        self.status = "failed"
        self.error = {"code": code, "message": message}
        return [self._event("response.failed", response=self.response())]

    def cancel(self) -> list[dict]:
        """A background response cancelled: the open item closes as "incomplete" (its
        text so far kept), and the response is "cancelled" (no terminal event exists)."""
        if self.open is not None:
            self.open.status = "incomplete"
        out: list[dict] = []
        self._close(out)
        self.status = "cancelled"
        return out

    # -- items ----------------------------------------------------------------------------
    def _ensure(self, out: list[dict], kind: str) -> None:
        if self.open is None or self.open.kind != kind:
            self._close(out)
            self._add(out, _Item(kind, len(self.items)))

    def _add(self, out: list[dict], item: _Item) -> None:
        self.items.append(item)
        self.open = item
        out.append(self._event("response.output_item.added", output_index=item.index,
                               item=item.body("in_progress")))
        if item.kind != "function_call":
            out.append(self._event("response.content_part.added", item_id=item.id, output_index=item.index,
                                   content_index=0, part=item.part()))  # new: no text yet

    def _text(self, item: _Item, text: str, kind: str) -> dict:
        first = not item.text
        item.text += text
        if kind == "response.function_call_arguments.delta":
            return self._event(kind, item_id=item.id, output_index=item.index, delta=text)
        extra = {}
        if kind == "response.output_text.delta":
            # a message's first text after another item: markup closing that item may be pending too
            entries = [oai_logprob(p, self.top_n) for p in self._take(text, from_end=first and item.index > 0)]
            item.logprobs.extend(entries)
            extra["logprobs"] = entries
        return self._event(kind, item_id=item.id, output_index=item.index, content_index=0, delta=text, **extra)

    def _take(self, text: str, from_end: bool) -> list[TokenProbs]:
        """The pending tokens that made `text`: the fewest whose bytes cover it, from the
        front (what is left, such as the end token, waits for the next text), or from the
        back, dropping the rest (a closing `</think>` or `</tool_call>`)."""
        pending, need = self.pending_probs, len(text.encode("utf-8", "replace"))
        n = got = 0
        while n < len(pending) and got < need:
            got += len((pending[-1 - n] if from_end else pending[n]).chosen.bytes)
            n += 1
        if from_end:
            taken, self.pending_probs = pending[len(pending) - n:], []
        else:
            taken, self.pending_probs = pending[:n], pending[n:]
        return taken

    def _close(self, out: list[dict]) -> None:
        item, self.open = self.open, None
        if item is None:
            return
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            if not item.text:
                item.text = "{}"
            out.append(self._event("response.function_call_arguments.done", **where, name=item.call.name,
                                   arguments=item.text))
        else:
            if item.kind == "reasoning":
                out.append(self._event("response.reasoning_text.done", **where, content_index=0, text=item.text))
            else:
                out.append(self._event("response.output_text.done", **where, content_index=0, text=item.text,
                                       logprobs=list(item.logprobs)))
            out.append(self._event("response.content_part.done", **where, content_index=0, part=item.part()))
        out.append(self._event("response.output_item.done", output_index=item.index, item=item.body(item.status)))

    # -- the object -----------------------------------------------------------------------
    def output(self) -> list[dict]:
        return [item.body(item.status) for item in self.items if item is not self.open]

    def response(self) -> dict:
        done = self.status in FINAL
        if done and self.completed_at is None:
            self.completed_at = int(time.time())
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "completed_at": self.completed_at, "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if self.status == "incomplete" else None,
            "model": self.model, "output": self.output() if done else [], "usage": self.usage,
            **self.echo,
        }


def response_usage(prompt_tokens: int, cached: int, output_tokens: int, reasoning_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + output_tokens}
