"""Llama 3.x tool calls: the whole answer is one JSON object `{"name": ..., "parameters":
{...}}` (Meta's JSON-based tool calling; "arguments" accepted too), or follows
`<|python_tag|>` -- there also as a built-in tool call `NAME.call(key="value", ...)`.
Several JSON calls may be separated by ";".

A leading `{` opens the block only at the start of the answer; an answer that starts with
`{` but is not a call comes back as content when the output ends."""

from __future__ import annotations

import ast
import re

from .block import BlockToolCallParser, Call, json_prefix

_BUILTIN = re.compile(r"^\s*([A-Za-z_][\w]*)\.call\((.*)\)\s*$", re.DOTALL)


def _json_calls(text: str) -> list[Call] | None:
    calls = []
    rest = text
    while rest.strip():
        found = json_prefix(rest)
        if found is None:
            return None
        obj, rest = found
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        calls.append((obj["name"], obj.get("parameters", obj.get("arguments", {}))))
        rest = rest.lstrip()
        rest = rest.removeprefix(";")
    return calls or None


def _builtin_call(text: str) -> list[Call] | None:
    m = _BUILTIN.match(text)
    if m is None:
        return None
    node = ast.parse(f"f({m.group(2)})", mode="eval").body
    if not isinstance(node, ast.Call) or node.args:
        return None
    return [(m.group(1), {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})]


class Llama3JsonParser(BlockToolCallParser):
    start = "<|python_tag|>"

    def find_start(self, buf: str) -> tuple[int, int] | None:
        if not self._emitted and buf.lstrip().startswith("{"):
            return 0, len(buf) - len(buf.lstrip())
        return super().find_start(buf)

    def held(self, buf: str) -> int:
        if not self._emitted and not buf.strip():
            return len(buf)  # the answer has not started: it may yet open with "{"
        return super().held(buf)

    def parse_block(self, body: str) -> list[Call] | None:
        if self._opened.strip() == "":  # opened by "{": the body is the JSON itself
            return _json_calls(body)
        return _json_calls(body) or _builtin_call(body)
