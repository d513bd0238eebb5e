"""Tool-call formats whose arguments are JSON, in a block after a marker.

- Mistral / Devstral / Ministral `[TOOL_CALLS]`: a JSON list `[{"name", "arguments"}]`, or
  one or more `NAME[ARGS]{...}` (optionally `NAME[CALL_ID]ID[ARGS]{...}`), each after its
  own `[TOOL_CALLS]`; to the end of the output.
- Granite 3.x `<|tool_call|>[{"name", "arguments"}]`; firefunction-v2 `functools[...]`.
- Command-R7B `<|START_ACTION|>[{"tool_call_id", "tool_name", "parameters"}]<|END_ACTION|>`; an answer's
  `<|START_RESPONSE|>`/`<|END_RESPONSE|>` are dropped; its `<|START_THINKING|>` block is the
  reasoning parser's (`REASONING_MARKERS`).  Parsed with or without tools; without callable
  tools an action block is content.
- DeepSeek V3.1 `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>
  <｜tool▁calls▁end｜>`; R1 writes `function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```` inside.
- NVIDIA Nemotron Nano v2 `<TOOLCALL>[...]</TOOLCALL>`; functionary v3.1 `<function=NAME>{...}</function>`;
  LFM2 `<|tool_call_start|>[f(a=1)]<|tool_call_end|>` (Python call syntax).
- Kimi K2 `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
  <|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>`.
"""

from __future__ import annotations

import ast
import json
import re

from .block import BlockToolCallParser, Call, json_prefix


def _named_list(value, name_key: str = "name", args_key: str = "arguments") -> list[Call] | None:
    if not isinstance(value, list) or not value:
        return None
    calls = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get(name_key), str):
            return None
        calls.append((item[name_key], item.get(args_key, {})))
    return calls


class MistralParser(BlockToolCallParser):
    start = "[TOOL_CALLS]"

    def parse_block(self, body: str) -> list[Call] | None:
        calls: list[Call] = []
        for part in body.split(self.start):
            part = part.strip()
            if part.startswith("["):
                found = json_prefix(part)
                listed = _named_list(found[0]) if found and not found[1].strip() else None
                if listed is None:
                    return None
                calls += listed
                continue
            name, sep, args = part.partition("[ARGS]")
            name = name.split("[CALL_ID]", 1)[0].strip()
            found = json_prefix(args)
            if not sep or not name or found is None or found[1].strip():
                return None
            calls.append((name, found[0]))
        return calls


class _JsonListParser(BlockToolCallParser):
    name_key, args_key = "name", "arguments"

    def parse_block(self, body: str) -> list[Call] | None:
        found = json_prefix(body)
        if found is None or found[1].strip():
            return None
        return _named_list(found[0], self.name_key, self.args_key)


class GraniteParser(_JsonListParser):
    start = "<|tool_call|>"


class FirefunctionParser(_JsonListParser):
    start = "functools"


class CommandR7BParser(_JsonListParser):
    start, end = "<|START_ACTION|>", "<|END_ACTION|>"
    drop = ("<|START_RESPONSE|>", "<|END_RESPONSE|>")
    name_key, args_key = "tool_name", "parameters"

    def parse_block(self, body: str) -> list[Call] | None:
        return None if self.tools is None else super().parse_block(body)


_DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.DOTALL)
_FENCED = re.compile(r"^\s*([^\n]+)\n```(?:json)?\n(.*?)\n?```\s*$", re.DOTALL)


class DeepSeekParser(BlockToolCallParser):
    start, end = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"

    def parse_block(self, body: str) -> list[Call] | None:
        calls = []
        for head, rest in _DS_CALL.findall(body):
            if head.strip() == "function":  # R1: the name and a fenced JSON block
                m = _FENCED.match(rest)
                if m is None:
                    return None
                calls.append((m.group(1).strip(), json.loads(m.group(2))))
            else:
                calls.append((head.strip(), json.loads(rest)))
        return calls or None


_KIMI_CALL = re.compile(r"<\|tool_call_begin\|>\s*(.*?)\s*<\|tool_call_argument_begin\|>(.*?)<\|tool_call_end\|>",
                        re.DOTALL)


class KimiK2Parser(BlockToolCallParser):
    start, end = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"

    def parse_block(self, body: str) -> list[Call] | None:
        calls = []
        for ident, args in _KIMI_CALL.findall(body):
            name = ident.removeprefix("functions.").rsplit(":", 1)[0]
            calls.append((name, json.loads(args)))
        return calls or None


class NemotronV2Parser(_JsonListParser):
    start, end = "<TOOLCALL>", "</TOOLCALL>"


class FunctionaryV31Parser(BlockToolCallParser):
    """functionary v3.1: `<function=NAME>{...}</function>`, one per call."""

    start, end = "<function=", "</function>"

    def parse_block(self, body: str) -> list[Call] | None:
        name, sep, args = body.partition(">")
        found = json_prefix(args)
        if not sep or not name.strip() or found is None or found[1].strip():
            return None
        return [(name.strip(), found[0])]


class Lfm2Parser(BlockToolCallParser):
    """LFM2: a Python list of calls, `<|tool_call_start|>[f(a=1), g(b="x")]<|tool_call_end|>`."""

    start, end = "<|tool_call_start|>", "<|tool_call_end|>"

    def parse_block(self, body: str) -> list[Call] | None:
        node = ast.parse(body.strip(), mode="eval").body
        items = node.elts if isinstance(node, ast.List) else [node]
        calls = []
        for item in items:
            if not isinstance(item, ast.Call) or not isinstance(item.func, ast.Name) or item.args:
                return None
            calls.append((item.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in item.keywords}))
        return calls or None
