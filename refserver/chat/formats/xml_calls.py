"""XML-style tool calls whose parameters are tagged text, not JSON.

- Qwen3-Coder: `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>`.
- GLM 4.5+: `<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n
  </tool_call>`.
A value is kept as text where the tool's schema says string, else read as JSON when it is
JSON (the templates write non-string values with `tojson`).
"""

from __future__ import annotations

import re

from .block import BlockToolCallParser, Call, param_types, typed_value

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


class Qwen3CoderParser(BlockToolCallParser):
    start, end = "<tool_call>", "</tool_call>"

    def parse_block(self, body: str) -> list[Call] | None:
        types = param_types(self.tools)
        calls = []
        for m in _FUNCTION.finditer(body):
            name = m.group(1).strip()
            schema = types.get(name, {})
            calls.append((name, {k.strip(): typed_value(v, schema.get(k.strip()))
                                 for k, v in _PARAMETER.findall(m.group(2))}))
        return calls or None


class Glm45Parser(BlockToolCallParser):
    start, end = "<tool_call>", "</tool_call>"

    def parse_block(self, body: str) -> list[Call] | None:
        name = body.split("<arg_key>", 1)[0].strip()
        if not name or "<" in name or "\n" in name:
            return None
        schema = param_types(self.tools).get(name, {})
        return [(name, {k.strip(): typed_value(v, schema.get(k.strip())) for k, v in _GLM_ARG.findall(body)})]


class SeedOssParser(Qwen3CoderParser):
    """ByteDance Seed-OSS: Qwen3-Coder's body inside `<seed:tool_call>`."""

    start, end = "<seed:tool_call>", "</seed:tool_call>"


_INVOKE = re.compile(r'<invoke name="([^"]+)">(.*?)</invoke>', re.DOTALL)
_MINIMAX_PARAM = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.DOTALL)


class MiniMaxM2Parser(BlockToolCallParser):
    """MiniMax-M2: `<minimax:tool_call><invoke name="NAME"><parameter name="KEY">VALUE
    </parameter></invoke></minimax:tool_call>`."""

    start, end = "<minimax:tool_call>", "</minimax:tool_call>"

    def parse_block(self, body: str) -> list[Call] | None:
        types = param_types(self.tools)
        calls = []
        for name, params in _INVOKE.findall(body):
            schema = types.get(name, {})
            calls.append((name, {k: typed_value(v.strip("\n"), schema.get(k))
                                 for k, v in _MINIMAX_PARAM.findall(params)}))
        return calls or None
