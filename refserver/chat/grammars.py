"""Structured-output constraints for the engine: requests -> `Constraint`s.

Only built here; the engine alone converts a `Constraint` to llguidance's form and
validates it, once, at submit (`refserver.engine.constraints`; llguidance's own error
text -> 400), so constraints never fail open and keywords llguidance does not implement
(`not`, `if`, `uniqueItems`, ...) are a 400 too.

- `chat_constraint` / `native_constraint`: what a chat / native request asks for, with the
  conflicts between `tools`, `response_format`, `json_schema` and `grammar` checked here
  and nowhere else.
- `response_format_constraint`: OpenAI `response_format` / llama.cpp's top-level
  `json_schema` and `grammar` -> `Constraint`.  JSON schemas get llguidance options in
  "x-guidance" (no free whitespace; ", " and ": " separators), so output cannot drown in
  whitespace; options the client put in "x-guidance" win.
- `tools_constraint`: a llguidance lark grammar for Hermes tool calls
  (`{"name": "f", "arguments": {...}}</tool_call>`), names restricted to the listed tools
  and arguments to each tool's `parameters` schema (whose top-level object gets
  `additionalProperties: false` unless it says otherwise, as llama.cpp's converter does);
  other families' calls from their syntax (`refserver.chat.formats.syntax`).
- `forbid_calls_constraint`: tool_choice "none" for a family whose call markers are several
  tokens: text without them.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from refserver.chat.formats.syntax import SYNTAX, CallSyntax
from refserver.engine.types import Constraint
from refserver.errors import InvalidRequest

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_START, TOOL_END = "<tool_call>", "</tool_call>"

_LARK_RULE = re.compile(r"^\s*[?!]?[A-Za-z_][A-Za-z0-9_.]*(\.\d+)?\s*:(?!:=)", re.MULTILINE)


def _with_options(schema: dict) -> dict:
    schema = dict(schema)
    user = schema.get("x-guidance")
    schema["x-guidance"] = {**JSON_OPTIONS, **(user if isinstance(user, dict) else {})}
    return schema


def _schema_constraint(schema: Any, where: str) -> Constraint:
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where} must be a JSON schema object, got {type(schema).__name__}")
    return Constraint(kind="json_schema", text=json.dumps(_with_options(schema), ensure_ascii=False),
                      source=where)


def grammar_constraint(grammar: str) -> Constraint:
    """`grammar` text: llguidance lark when it starts with %llguidance or has lark rules
    (`name: ...`), else llama.cpp GBNF."""
    if not isinstance(grammar, str):
        raise InvalidRequest("'grammar' must be a string")
    stripped = grammar.lstrip()
    if stripped.startswith("%llguidance") or ("::=" not in grammar and _LARK_RULE.search(grammar)):
        return Constraint(kind="lark", text=grammar, source="'grammar'")
    return Constraint(kind="gbnf", text=grammar, source="'grammar'")


def response_format_constraint(response_format: dict | None, json_schema: Any = None,
                               grammar: str | None = None) -> Constraint | None:
    if json_schema is not None and grammar is not None:
        raise InvalidRequest("either 'json_schema' or 'grammar' can be given, not both")
    rf_constraint: Constraint | None = None
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise InvalidRequest("'response_format' must be an object like {\"type\": \"json_object\"}")
        rtype = response_format.get("type")
        if rtype in (None, "", "text"):
            rf_constraint = None
        elif rtype == "json_object":
            schema = response_format.get("schema", {"type": "object"})
            rf_constraint = _schema_constraint(schema, "response_format.schema")
        elif rtype == "json_schema":
            js = response_format.get("json_schema")
            if js is None:
                schema = response_format.get("schema", {"type": "object"})
            elif not isinstance(js, dict):
                raise InvalidRequest("response_format.json_schema must be an object "
                                     '{"name": ..., "schema": {...}}')
            else:
                schema = js.get("schema", {"type": "object"})
            rf_constraint = _schema_constraint(schema, "response_format.json_schema.schema")
        else:
            raise InvalidRequest(f"response_format type must be one of 'text', 'json_object', "
                                 f"'json_schema', got {rtype!r}")
    if rf_constraint is not None:
        if grammar is not None or json_schema is not None:
            raise InvalidRequest("'response_format' cannot be combined with 'grammar' or 'json_schema'")
        return rf_constraint
    if json_schema is not None:
        return _schema_constraint(json_schema, "'json_schema'")
    if grammar is not None:
        if grammar == "":
            return None
        return grammar_constraint(grammar)
    return None


# -- tools ------------------------------------------------------------------------------

def _tool_functions(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array")
    fns = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                 "{\"name\": ..., \"parameters\": {...}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function.name must be a non-empty string")
        params = fn.get("parameters", {"type": "object"})
        if params is None:
            params = {"type": "object"}
        if not isinstance(params, dict):
            raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object")
        fns.append({"name": name, "parameters": params})
    return fns


def _args_schema(params: dict) -> dict:
    schema = copy.deepcopy(params)
    if ("properties" in schema and "additionalProperties" not in schema
            and schema.get("type", "object") == "object"):
        schema["additionalProperties"] = False
    return _with_options(schema)


def _lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _marker(text: str, token_names: frozenset[str]) -> str:
    """A tool-call marker in lark: llguidance matches a marker that is one added token of
    the vocabulary only by its token reference (`<tool_call>`), never by its text."""
    return text if text in token_names else _lit(text)


def _tools_lark(fns: list[dict], open_first: bool, parallel: bool, token_names: frozenset[str]) -> str:
    start, end = _marker(TOOL_START, token_names), _marker(TOOL_END, token_names)
    rules = []
    alts = []
    for i, fn in enumerate(fns):
        head = '{"name": ' + json.dumps(fn["name"], ensure_ascii=False) + ', "arguments": '
        rules.append(f"fn{i}: {_lit(head)} fn{i}_args \"}}\"")
        rules.append(f"fn{i}_args: %json " + json.dumps(_args_schema(fn["parameters"]), ensure_ascii=False))
        alts.append(f"fn{i}")
    call = f'"\\n"? call_body "\\n"? {end}'
    more = f'(("\\n" | "\\n\\n")? {start} {call})*' if parallel else ""
    first = f"{start} {call}" if open_first else call
    lines = [f"start: {first} {more}".rstrip(), "call_body: " + " | ".join(alts)] + rules
    return "\n".join(lines) + "\n"


def _literal(text: str, token_names: frozenset[str]) -> str:
    """Literal text as a lark sequence, the added tokens in it referenced as tokens."""
    names = sorted((t for t in token_names if t and t in text), key=len, reverse=True)
    if not names:
        return _lit(text) if text else ""
    pieces = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
    return " ".join(p if p in token_names else _lit(p) for p in pieces if p)


def _args_rules(syntax: CallSyntax, rule: str, params: dict, token_names: frozenset[str]) -> list[str]:
    """The lark rule(s) of one tool's arguments: its JSON schema, or for the XML families one
    tagged value per parameter (schema order; those not required optional)."""
    if syntax.param is None:
        return [f"{rule}: %json " + json.dumps(_args_schema(params), ensure_ascii=False)]
    props = params.get("properties") or {}
    required = set(params.get("required") or ())
    parts, lines = [], []
    for j, (key, schema) in enumerate(props.items()):
        before, after = syntax.param(key)
        if isinstance(schema, dict) and schema.get("type") == "string":  # written as bare text
            enum = [v for v in schema.get("enum") or () if isinstance(v, str)]
            value = "(" + " | ".join(_lit(v) for v in enum) + ")" if enum else r"/[^<\n]*/"
        else:
            value = "%json " + json.dumps(_with_options(schema if isinstance(schema, dict) else {}),
                                          ensure_ascii=False)
        lines.append(f"{rule}_{j}: {_literal(before, token_names)} {value} {_literal(after, token_names)}")
        parts.append(f"{rule}_{j}" + ("" if key in required else "?"))
    return [f"{rule}: " + (" ".join(parts) if parts else '""')] + lines


def _syntax_lark(syntax: CallSyntax, fns: list[dict], lazy: bool, parallel: bool,
                 token_names: frozenset[str]) -> str:
    """Grammar of a family's calls (`refserver.chat.formats.syntax`); when lazy, of the text
    after its trigger."""
    lines, firsts, calls = [], [], []
    tail = _literal(syntax.tail, token_names)
    for i, fn in enumerate(fns):
        head = syntax.head(fn["name"])
        first = syntax.open + head
        if lazy and first.startswith(syntax.lazy_trigger):
            first = first[len(syntax.lazy_trigger):]
        lines += _args_rules(syntax, f"fn{i}_args", fn["parameters"], token_names)
        lines.append(f"first{i}: {_literal(first, token_names)} fn{i}_args {tail}".rstrip())
        lines.append(f"call{i}: {_literal(head, token_names)} fn{i}_args {tail}".rstrip())
        firsts.append(f"first{i}")
        calls.append(f"call{i}")
    more = f" ({_literal(syntax.join, token_names)} call)*" if parallel else ""
    close = f" {_literal(syntax.close, token_names)}" if syntax.close else ""
    head_lines = [f"start: first{more}{close}", "first: " + " | ".join(firsts), "call: " + " | ".join(calls)]
    return "\n".join(head_lines + lines) + "\n"


def _regex_lit(text: str) -> str:
    """`text` inside a lark /regex/, every non-alphanumeric character as a `\\x{..}` escape."""
    return "".join(c if c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def forbid_calls_constraint(markers: tuple[str, ...], token_names: frozenset[str] = frozenset(),
                            prefix: str = "") -> Constraint | None:
    """tool_choice "none" where a format's call markers are several tokens (a -inf bias bans
    only single tokens): the whole output is text containing none of `markers`, after
    `prefix` (what an answer without calls opens with, e.g. functionary v3.2's "all\\n");
    the vocabulary's added tokens other than the markers may come between."""
    if not markers:
        return None
    special = sorted(t for t in token_names if t and t not in markers)
    text = "TEXT: /(.|\\n)+/ & ~/(.|\\n)*(" + "|".join(map(_regex_lit, markers)) + ")(.|\\n)*/"
    lines = [f"start: {_lit(prefix) + ' ' if prefix else ''}TEXT?" + (" (special TEXT?)*" if special else ""), text]
    if special:
        lines.append("special: " + " | ".join(special))
    return Constraint(kind="lark", text="\n".join(lines) + "\n", source="tool_choice \"none\"")


def close_reasoning_first(c: Constraint, end: str, token_names: frozenset[str] = frozenset()) -> Constraint:
    """A forced tool grammar for a prompt that ends inside an open reasoning block (the
    template opened `<think>`): the block is closed first, then the call is forced."""
    text = c.text.replace("start:", "tool_start:", 1)
    return Constraint(kind=c.kind, text=f'start: {_literal(end, token_names)} ("\\n" | "\\n\\n")? tool_start\n' + text,
                      source=c.source)


def reasoning_first(c: Constraint, start: str, end: str, token_names: frozenset[str] = frozenset()) -> Constraint:
    """A forced tool grammar for a family whose model plans in its own reasoning block before
    acting (Command-R7B): an optional block, then the call.  An end marker that is one added
    token follows the text as a token; otherwise the text runs to the marker's first
    occurrence (a lark `suffix`)."""
    text = c.text.replace("start:", "tool_start:", 1)
    if end in token_names:
        block = f"reasoning: REASONING_TEXT? {end}\nREASONING_TEXT: /(.|\\n)+/"
    else:
        block = f"reasoning[suffix={_lit(end)}]: /(.|\\n)*/"
    return Constraint(kind=c.kind, text=f"start: ({_literal(start, token_names)} reasoning)? tool_start\n{block}\n"
                      + text, source=c.source)


def tools_constraint(tools: list[dict], tool_choice: Any = "auto", parallel_tool_calls: bool = False,
                     token_names: frozenset[str] = frozenset(), fmt: str | None = "hermes") -> Constraint | None:
    """Grammar for tool calls in the format `fmt` (Hermes, or one in
    `refserver.chat.formats.syntax.SYNTAX`).  "auto": lazy, from the format's trigger on (the
    grammar describes the text after it); "required" / a named function: forced from the
    first token; "none" (or no tools): None.  A format without a grammar gets none for "auto"
    and a 400 for "required" / named.  `token_names`: the vocabulary's added tokens
    (`TextTokenizer.added_token_names`), so markers that are single tokens are referenced
    as tokens."""
    if tool_choice is None:
        tool_choice = "auto"
    if tool_choice == "none" or not tools:
        if tool_choice not in ("none", "auto") and not tools:
            raise InvalidRequest("'tool_choice' needs 'tools'")
        return None
    fns = _tool_functions(tools)
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(name, str):
            raise InvalidRequest("'tool_choice' object must be "
                                 '{"type": "function", "function": {"name": ...}}')
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise InvalidRequest(f"tool_choice names function {name!r}, which is not in 'tools' "
                                 f"({', '.join(f['name'] for f in _tool_functions(tools))})")
    elif tool_choice not in ("auto", "required"):
        raise InvalidRequest(f"'tool_choice' must be 'none', 'auto', 'required' or "
                             f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}')
    lazy = tool_choice == "auto"
    if fmt == "hermes":
        text = _tools_lark(fns, open_first=not lazy, parallel=parallel_tool_calls, token_names=token_names)
        trigger = TOOL_START
    elif fmt in SYNTAX:
        text = _syntax_lark(SYNTAX[fmt], fns, lazy, parallel_tool_calls, token_names)
        trigger = SYNTAX[fmt].lazy_trigger
    elif lazy:
        return None
    else:
        raise InvalidRequest(f"tool_choice {tool_choice!r} is not supported with this chat template: its "
                             f"tool-call format ({fmt or 'none detected'}) has no grammar here; use \"auto\"")
    return Constraint(kind="lark", text=text, lazy_trigger=trigger if lazy else None, source="tool parameters schema")


def chat_constraint(*, tools: list[dict] | None, tool_choice: Any, parallel_tool_calls: bool,
                    response_format: Any, json_schema: Any, grammar: str | None,
                    token_names: frozenset[str] = frozenset(), fmt: str | None = "hermes",
                    think_open: bool = False, think: tuple[str, str] = ("<think>", "</think>"),
                    think_first: bool = False, call_markers: tuple[str, ...] = (),
                    plain_prefix: str = "") -> Constraint | None:
    """A chat request's constraint: tool calls in the template's format `fmt` (when the
    model may call tools) or structured output, never both.  `think_open`: the prompt ends
    inside an open reasoning block (`think`: its markers), so a forced call first closes it;
    `think_first`: the family's model may reason in such a block before a forced call
    (`reasoning_first`).  tool_choice "none" without structured output: text without
    `call_markers` (after `plain_prefix`), see `forbid_calls_constraint`."""
    rf = response_format_constraint(response_format, json_schema=json_schema, grammar=grammar or None)
    if tool_choice == "none" and call_markers and rf is None:
        return forbid_calls_constraint(call_markers, token_names, plain_prefix)
    if not tools or tool_choice == "none":
        return rf
    if rf is not None or grammar:
        raise InvalidRequest("'tools' cannot be combined with response_format, json_schema or grammar")
    tc = tools_constraint(tools, tool_choice or "auto", parallel_tool_calls, token_names=token_names, fmt=fmt)
    if tc is not None and tc.lazy_trigger is None and think_open:
        tc = close_reasoning_first(tc, think[1], token_names)
    elif tc is not None and tc.lazy_trigger is None and think_first:
        tc = reasoning_first(tc, *think, token_names)
    return tc


def native_constraint(grammar: str | None, json_schema: Any) -> Constraint | None:
    """`grammar` / `json_schema` of a native request (grammar wins, as in llama.cpp)."""
    grammar = grammar or None
    schema = None if grammar else json_schema
    if grammar is None and schema is None:
        return None
    return response_format_constraint(None, json_schema=schema, grammar=grammar)
