"""The call syntax of the JSON-argument tool-call formats, for grammars (`tool_choice`).

A format's calls are `open`, then one or more `head(name) ARGS tail` joined by `join`, then
`close`; ARGS is the tool's JSON arguments -- or, for the XML families (`param` set), each
parameter as `param(key)[0] VALUE param(key)[1]`, VALUE being text for a string parameter
(one line, no "<") and JSON otherwise. `trigger` is the text whose appearance starts a
call when the model may also answer in text (lazy grammar, tool_choice "auto"); it is a
prefix of `open` + `head(name)` for every name -- or, where the prompt writes it before the
first call (functionary v3.2's `>>>`), what precedes a call. Formats whose arguments are not JSON (the
XML families) have no entry: `tool_choice` required / named is refused for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CallSyntax:
    open: str
    head: Callable[[str], str]
    tail: str
    join: str = ""
    close: str = ""
    trigger: str = ""
    param: Callable[[str], tuple[str, str]] | None = None

    @property
    def lazy_trigger(self) -> str:
        return self.trigger or self.open

    def write(self, calls: list[tuple[str, dict]]) -> str:
        """The text of `calls` (name, arguments) in this syntax, as a model writes them."""
        def args(values: dict) -> str:
            if self.param is None:
                return json.dumps(values, ensure_ascii=False)
            return "".join(self.param(k)[0] + (v if isinstance(v, str) else json.dumps(v)) + self.param(k)[1]
                           for k, v in values.items())

        return self.open + self.join.join(self.head(name) + args(values) + self.tail for name, values in calls) + self.close


def _q(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


SYNTAX: dict[str, CallSyntax] = {
    "deepseek": CallSyntax("<｜tool▁calls▁begin｜>", lambda n: f"<｜tool▁call▁begin｜>{n}<｜tool▁sep｜>",
                           "<｜tool▁call▁end｜>", close="<｜tool▁calls▁end｜>"),
    "kimi_k2": CallSyntax("<|tool_calls_section_begin|>",
                          lambda n: f"<|tool_call_begin|>functions.{n}:0<|tool_call_argument_begin|>",
                          "<|tool_call_end|>", close="<|tool_calls_section_end|>"),
    "mistral": CallSyntax("[TOOL_CALLS]", lambda n: f"{n}[ARGS]", "", join="[TOOL_CALLS]"),
    "llama3_json": CallSyntax("", lambda n: '{"name": ' + _q(n) + ', "parameters": ', "}", join="; ",
                              trigger='{"name": '),
    "command_r7b": CallSyntax("<|START_ACTION|>[",
                              lambda n: '{"tool_call_id": "0", "tool_name": ' + _q(n) + ', "parameters": ',
                              "}", join=", ", close="]<|END_ACTION|>"),
    "granite": CallSyntax("<|tool_call|>[", lambda n: '{"name": ' + _q(n) + ', "arguments": ', "}", join=", ",
                          close="]"),
    "nemotron_v2": CallSyntax("<TOOLCALL>[", lambda n: '{"name": ' + _q(n) + ', "arguments": ', "}",
                              join=", ", close="]</TOOLCALL>"),
    "firefunction_v2": CallSyntax("functools[", lambda n: '{"name": ' + _q(n) + ', "arguments": ', "}",
                                  join=", ", close="]"),
    "functionary_v3_2": CallSyntax("", lambda n: f"{n}\n", "", join=">>>", trigger=">>>"),
    "functionary_v3_1": CallSyntax("", lambda n: f"<function={n}>", "</function>", trigger="<function="),
    "qwen3_coder": CallSyntax("", lambda n: f"<tool_call>\n<function={n}>\n", "</function>\n</tool_call>",
                              join="\n", trigger="<tool_call>",
                              param=lambda k: (f"<parameter={k}>\n", "\n</parameter>\n")),
    "seed_oss": CallSyntax("", lambda n: f"<seed:tool_call>\n<function={n}>\n", "</function>\n</seed:tool_call>",
                           join="\n", trigger="<seed:tool_call>",
                           param=lambda k: (f"<parameter={k}>", "</parameter>\n")),
    "glm45": CallSyntax("", lambda n: f"<tool_call>{n}\n", "</tool_call>", join="\n", trigger="<tool_call>",
                        param=lambda k: (f"<arg_key>{k}</arg_key>\n<arg_value>", "</arg_value>\n")),
    "minimax_m2": CallSyntax("", lambda n: f'<minimax:tool_call>\n<invoke name="{n}">\n',
                             "</invoke>\n</minimax:tool_call>", join="\n", trigger="<minimax:tool_call>",
                             param=lambda k: (f'<parameter name="{k}">', "</parameter>\n")),
    "harmony": CallSyntax("", lambda n: f"<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>",
                          "<|call|>", join="<|start|>assistant", trigger="<|channel|>commentary to="),
}
