"""One generation rendered as an Anthropic message and its stream events.

`MessageRenderer` turns a choice's deltas (`refserver.stream`) into `content_block_start` /
`content_block_delta` (`thinking_delta`, `text_delta`, `input_json_delta`) /
`content_block_stop`, between `message_start` and `message_delta` + `message_stop`.
A non-streamed request runs the same renderer and returns `message()`.
"""

from __future__ import annotations

import json
import secrets
import string

from refserver.stream.deltas import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(24))


def stop_reason(stop_type: str, stopping_word: str, has_calls: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from the engine's stop_type."""
    if stop_type == "limit":
        return "max_tokens", None
    if has_calls:
        return "tool_use", None
    if stop_type == "word":
        return "stop_sequence", stopping_word
    return "end_turn", None


class _Block:
    def __init__(self, kind: str, call: ToolCallStart | None = None):
        self.kind, self.call, self.text = kind, call, ""

    def start(self) -> dict:
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        if self.kind == "text":
            return {"type": "text", "text": ""}
        return {"type": "tool_use", "id": self.call.id.replace("call_", "toolu_", 1), "name": self.call.name,
                "input": {}}

    def delta(self, text: str) -> dict:
        key = {"thinking": ("thinking_delta", "thinking"), "text": ("text_delta", "text"),
               "tool_use": ("input_json_delta", "partial_json")}[self.kind]
        return {"type": key[0], key[1]: text}

    def final(self) -> dict:
        block = self.start()
        if self.kind == "tool_use":
            try:
                args = json.loads(self.text) if self.text.strip() else {}
            except ValueError:
                args = {"_raw": self.text}  # cut short by max_tokens: kept, never dropped
            block["input"] = args if isinstance(args, dict) else {"value": args}
        else:
            block[self.kind] = self.text
        return block


class MessageRenderer:
    def __init__(self, model: str, input_tokens: int):
        self.id = new_id("msg_")
        self.model = model
        self.input_tokens = input_tokens
        self.blocks: list[_Block] = []
        self.open = False
        self.pending_space = ""
        self.stop: tuple[str | None, str | None] = (None, None)
        self.usage = {"input_tokens": input_tokens, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}

    def start(self) -> list[dict]:
        return [{"type": "message_start", "message": self.message()}]

    def deltas(self, deltas: list) -> list[dict]:
        """The events of a choice's deltas (token, progress and finish deltas add none)."""
        out: list[dict] = []
        for d in deltas:
            if isinstance(d, ReasoningDelta):
                self._ensure(out, "thinking")
                self._append(out, d.text)
            elif isinstance(d, TextDelta):
                if not self._is_open("text") and not (self.pending_space + d.text).strip():
                    self.pending_space += d.text  # whitespace alone opens no text block
                    continue
                text, self.pending_space = self.pending_space + d.text, ""
                self._ensure(out, "text")
                self._append(out, text)
            elif isinstance(d, ToolCallStart):
                self._close(out)
                self._begin(out, _Block("tool_use", d))
            elif isinstance(d, ToolCallArgs) and self._is_open("tool_use"):
                self._append(out, d.text)
        return out

    def _append(self, out: list[dict], text: str) -> None:
        if text:
            block = self.blocks[-1]
            block.text += text
            out.append({"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": block.delta(text)})

    def finish(self, stop_type: str, stopping_word: str, output_tokens: int, cached: int) -> list[dict]:
        out: list[dict] = []
        if self.pending_space and not self.blocks:
            self._ensure(out, "text")
            self.blocks[-1].text = self.pending_space
            out.append({"type": "content_block_delta", "index": 0, "delta": self.blocks[-1].delta(self.pending_space)})
        self._close(out)
        has_calls = any(b.kind == "tool_use" for b in self.blocks)
        self.stop = stop_reason(stop_type, stopping_word, has_calls)
        self.usage.update(input_tokens=self.input_tokens - cached, cache_read_input_tokens=cached,
                          output_tokens=output_tokens)
        out.append({"type": "message_delta", "delta": {"stop_reason": self.stop[0], "stop_sequence": self.stop[1]},
                    "usage": dict(self.usage)})
        out.append({"type": "message_stop"})
        return out

    def message(self) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [b.final() for b in self.blocks] if self.stop[0] else [],
                "stop_reason": self.stop[0], "stop_sequence": self.stop[1], "usage": dict(self.usage)}

    # -- blocks ---------------------------------------------------------------------------
    def _is_open(self, kind: str) -> bool:
        return self.open and self.blocks[-1].kind == kind

    def _ensure(self, out: list[dict], kind: str) -> None:
        if not self._is_open(kind):
            self._close(out)
            self._begin(out, _Block(kind))

    def _begin(self, out: list[dict], block: _Block) -> None:
        self.blocks.append(block)
        self.open = True
        out.append({"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": block.start()})

    def _close(self, out: list[dict]) -> None:
        if self.open:
            out.append({"type": "content_block_stop", "index": len(self.blocks) - 1})
            self.open = False
