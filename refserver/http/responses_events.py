"""One generation rendered as an OpenAI Responses object and its typed stream events.

`ResponseRenderer` takes a choice's deltas (`refserver.stream`: reasoning, text, tool-call
starts and argument fragments) and returns the events they cause, each with its `sequence_number`, in the
documented order: `response.created`, `response.in_progress`, then per output item
`output_item.added`, `content_part.added`, the `*.delta`s, their `*.done`,
`content_part.done`, `output_item.done`, and last `response.completed` (or
`.incomplete` when cut by max_output_tokens, `.failed` on an error).  A non-streamed
request runs the same renderer and returns `response()`, so both modes agree.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from refserver.stream.deltas import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


class _Item:
    """An output item being streamed: reasoning, message or function_call."""

    def __init__(self, kind: str, index: int, call: ToolCallStart | None = None):
        self.kind, self.index = kind, index
        self.id = new_id({"reasoning": "rs_", "message": "msg_", "function_call": "fc_"}[kind])
        self.text = ""
        self.call = call

    def part(self) -> dict:
        if self.kind == "reasoning":
            return {"type": "reasoning_text", "text": self.text}
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

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
    def __init__(self, echo: dict[str, Any], model: str):
        """`echo`: the request fields a response object repeats (instructions, tools, ...)."""
        self.id = new_id("resp_")
        self.created_at = int(time.time())
        self.echo, self.model = echo, model
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.pending_space = ""  # whitespace-only content not yet worth a message item
        self.status = "in_progress"
        self.usage: dict | None = None
        self.error: dict | None = None

    # -- events ---------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def deltas(self, deltas: list) -> list[dict]:
        """The events of a choice's deltas (token, progress and finish deltas add none)."""
        out: list[dict] = []
        for d in deltas:
            if isinstance(d, ReasoningDelta):
                self._ensure(out, "reasoning")
                out.append(self._text(self.open, d.text, "response.reasoning_text.delta"))
            elif isinstance(d, TextDelta):
                self._content(out, d.text)
            elif isinstance(d, ToolCallStart):
                self._close(out)
                self._add(out, _Item("function_call", len(self.items), d))
            elif isinstance(d, ToolCallArgs) and self.open is not None and self.open.kind == "function_call":
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
                                   content_index=0, part={**item.part(), "text": ""}))

    def _text(self, item: _Item, text: str, kind: str) -> dict:
        item.text += text
        extra = {"logprobs": []} if kind == "response.output_text.delta" else {}
        if kind == "response.function_call_arguments.delta":
            return self._event(kind, item_id=item.id, output_index=item.index, delta=text)
        return self._event(kind, item_id=item.id, output_index=item.index, content_index=0, delta=text, **extra)

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
                                       logprobs=[]))
            out.append(self._event("response.content_part.done", **where, content_index=0, part=item.part()))
        out.append(self._event("response.output_item.done", output_index=item.index, item=item.body("completed")))

    # -- the object -----------------------------------------------------------------------
    def output(self) -> list[dict]:
        return [item.body("completed") for item in self.items if item is not self.open]

    def response(self) -> dict:
        done = self.status in ("completed", "incomplete", "failed")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": self.status,
            "completed_at": int(time.time()) if done else None, "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if self.status == "incomplete" else None,
            "model": self.model, "output": self.output() if done else [], "usage": self.usage,
            **self.echo,
        }


def response_usage(prompt_tokens: int, cached: int, output_tokens: int, reasoning_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + output_tokens}
