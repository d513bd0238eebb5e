"""Validation and normalisation of OpenAI chat `messages` (CONTRACT §3, §4).

`normalize_messages` returns new dicts ready for a chat template:
- `content` is a plain string: text parts are joined with "\\n", except in a trailing
  assistant message (a prefill), whose parts are concatenated with no separator.
  A null `content` becomes "" -- except for an assistant message with `tool_calls`, where
  it stays None (templates test `message.content` for that case).
- `tool_calls[*].function.arguments`, when a JSON string holding valid JSON, is parsed
  into an object (templates render arguments with `tojson`); otherwise left as is.
- Other keys (`name`, `tool_call_id`, `reasoning_content`, ...) are kept; `reasoning` (vLLM's
  newer name) is copied to `reasoning_content` when that is absent.
"""

from __future__ import annotations

import json
from typing import Any

from refserver.errors import InvalidRequest

_MULTIMODAL_PARTS = ("image_url", "input_audio", "image", "audio", "video_url", "input_image")


def _content_text(content: Any, where: str, sep: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: 'content' must be a string, null or an array of content "
                             f"parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidRequest(f"{where}: content part {j} must be an object like "
                                 '{"type": "text", "text": "..."}')
        ptype = part.get("type")
        if ptype == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}: content part {j} of type 'text' needs a string 'text'")
            texts.append(text)
        elif ptype in _MULTIMODAL_PARTS:
            raise InvalidRequest(f"{where}: content part of type '{ptype}' needs a multimodal model "
                                 "(this server's model takes text only); send text parts only")
        else:
            raise InvalidRequest(f"{where}: unsupported content part type {ptype!r}; "
                                 "only 'text' parts are supported")
    return sep.join(texts)


def _normalize_tool_calls(tool_calls: Any, where: str) -> list[dict]:
    if not isinstance(tool_calls, list):
        raise InvalidRequest(f"{where}: 'tool_calls' must be an array")
    out = []
    for j, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            raise InvalidRequest(f"{where}: tool_calls[{j}] must be an object")
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"{where}: tool_calls[{j}] needs 'function': "
                                 '{"name": str, "arguments": str}')
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                parsed = json.loads(args) if args.strip() else {}
            except ValueError:
                parsed = None
            if parsed is not None:
                args = parsed
        new_call = dict(call)
        new_call.setdefault("type", "function")
        new_call["function"] = {**fn, "arguments": args}
        out.append(new_call)
    return out


def normalize_messages(messages: Any) -> list[dict]:
    """Validate OpenAI chat messages; raise InvalidRequest telling what to fix."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of message objects, got "
                             f"{'null' if messages is None else type(messages).__name__}")
    if not messages:
        raise InvalidRequest("'messages' must not be empty")
    n = len(messages)
    if (n >= 2 and isinstance(messages[-1], dict) and isinstance(messages[-2], dict)
            and messages[-1].get("role") == "assistant" and messages[-2].get("role") == "assistant"):
        raise InvalidRequest("cannot have 2 or more assistant messages at the end of the list "
                             "(only one trailing assistant message is allowed, as a prefill)")
    out: list[dict] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object with 'role' and 'content'")
        role = msg.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"{where}: 'role' is required and must be a string")
        new = dict(msg)
        has_calls = role == "assistant" and msg.get("tool_calls") not in (None, [])
        if has_calls:
            new["tool_calls"] = _normalize_tool_calls(msg["tool_calls"], where)
        elif "tool_calls" in new and new["tool_calls"] in (None, []):
            del new["tool_calls"]
        if "content" not in msg:
            if role == "assistant" and has_calls:
                new["content"] = None
            elif role == "assistant":
                raise InvalidRequest(f"{where}: an assistant message needs 'content' or 'tool_calls'")
            else:
                raise InvalidRequest(f"{where}: a '{role}' message needs 'content'")
        else:
            content = msg["content"]
            if content is None:
                new["content"] = None if has_calls else ""
            else:
                is_prefill = role == "assistant" and i == n - 1
                new["content"] = _content_text(content, where, "" if is_prefill else "\n")
        for key in ("reasoning_content", "reasoning"):
            if msg.get(key) is not None and not isinstance(msg[key], str):
                raise InvalidRequest(f"{where}: '{key}' must be a string")
        if msg.get("reasoning") and not msg.get("reasoning_content"):
            new["reasoning_content"] = msg["reasoning"]  # vLLM's newer name; templates read reasoning_content
        out.append(new)
    return out
