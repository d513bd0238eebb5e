"""Chat templates: sandboxed Jinja with Hugging Face `apply_chat_template` semantics.

- Environment: `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with
  the `loopcontrols` extension and a no-op `{% generation %}` block (as HF has);
  globals `raise_exception(msg)` (-> InvalidRequest with the template's message) and
  `strftime_now(fmt)`; filter `tojson` like HF's (no HTML escaping, keeps non-ASCII).
- Variables: `messages, tools, add_generation_prompt, bos_token, eos_token`, plus the
  request's `chat_template_kwargs` merged in (they may override the defaults).
- Prefill: a trailing assistant message (without tool_calls) is not given to the
  template; the messages before it are rendered with add_generation_prompt=True and its
  content is appended verbatim.
- Tools with a template that cannot render them (caps["supports_tools"] false, e.g. every
  named built-in, or chatml fallback): a tool description in the Hermes `<tool_call>`
  format is merged into the system message, so tools are never dropped silently.
- `--no-jinja`: llama.cpp then formats with its non-Jinja built-in detected from the
  template text.  refserver emulates that by rendering the named built-in whose name the
  template matches (`detect_named_template`, llama.cpp's heuristics; chatml when none
  matches).  Tools need --jinja: rendering with tools then raises InvalidRequest.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from refserver.chat.messages import normalize_messages
from refserver.chat.named_templates import NAMED_TEMPLATES
from refserver.errors import InvalidRequest


class _TemplateRaised(Exception):
    """raise_exception() inside a template."""


def _raise_exception(message: Any = "") -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _make_env()


def _tool_system_prompt(tools: list) -> str:
    lines = ["# Tools", "",
             "You may call one or more functions to assist with the user query.", "",
             "You are provided with function signatures within <tools></tools> XML tags:",
             "<tools>"]
    lines += [json.dumps(t, ensure_ascii=False) for t in tools]
    lines += ["</tools>", "",
              ("For each function call, return a json object with function name and arguments "
               "within <tool_call></tool_call> XML tags:"),
              "<tool_call>",
              '{"name": <function-name>, "arguments": <args-json-object>}',
              "</tool_call>"]
    return "\n".join(lines)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str | None = None, eos_token: str | None = None,
                 name: str | None = None, jinja: bool = True):
        if not isinstance(source, str):
            raise InvalidRequest("chat template must be a string")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.jinja = jinja
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise InvalidRequest(f"chat template syntax error at line {e.lineno}: {e.message}") from e
        self._caps: dict | None = None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, jinja={self.jinja})"

    # -- rendering --------------------------------------------------------------------
    def _render_raw(self, messages: list, tools: list | None, add_generation_prompt: bool,
                    template_kwargs: dict | None) -> str:
        ctx: dict[str, Any] = {
            "messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
        }
        if template_kwargs:
            ctx.update(template_kwargs)
        try:
            return self._template.render(**ctx)
        except _TemplateRaised as e:
            raise InvalidRequest(f"chat template error: {e}") from e
        except jinja2.TemplateError as e:
            raise InvalidRequest(f"chat template error: {type(e).__name__}: {e}") from e
        except InvalidRequest:
            raise
        except Exception as e:  # TypeError, KeyError, ... raised while rendering
            raise InvalidRequest(f"chat template error: {type(e).__name__}: {e}") from e

    def render(self, messages: Any, tools: list | None = None, add_generation_prompt: bool = True,
               template_kwargs: dict | None = None) -> str:
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array")
        if tools and not self.jinja:
            raise InvalidRequest("tools require --jinja (the server was started with --no-jinja)")
        if template_kwargs is not None and not isinstance(template_kwargs, dict):
            raise InvalidRequest("'chat_template_kwargs' must be an object")
        msgs = normalize_messages(messages)
        prefill = None
        if msgs[-1]["role"] == "assistant" and not msgs[-1].get("tool_calls"):
            prefill = msgs[-1]["content"] or ""
            msgs = msgs[:-1]
            add_generation_prompt = True
        tools = tools or None
        if tools and not self.caps["supports_tools"]:
            msgs = self._inject_tools(msgs, tools)
            tools = None
        text = self._render_raw(msgs, tools, add_generation_prompt, template_kwargs)
        return text + prefill if prefill is not None else text

    def _inject_tools(self, msgs: list[dict], tools: list) -> list[dict]:
        desc = _tool_system_prompt(tools)
        msgs = [dict(m) for m in msgs]
        if msgs and msgs[0]["role"] == "system":
            sys = msgs[0].get("content") or ""
            msgs[0]["content"] = (sys + "\n\n" + desc) if sys else desc
        else:
            msgs.insert(0, {"role": "system", "content": desc})
        if not self.caps["supports_system_role"]:
            # fold the system text into the first user message
            sys = msgs.pop(0)["content"]
            for m in msgs:
                if m["role"] == "user":
                    m["content"] = sys + "\n\n" + (m.get("content") or "")
                    break
            else:
                msgs.insert(0, {"role": "user", "content": sys})
        return msgs

    # -- capabilities -----------------------------------------------------------------
    def _probe(self, messages: list, tools: list | None = None, gen: bool = False) -> str:
        try:
            return self._render_raw(messages, tools, gen, None)
        except Exception:  # noqa: BLE001 -- a probe the template cannot render means "unsupported"
            return ""

    @property
    def caps(self) -> dict:
        """What the template can render, found by rendering probe conversations
        (the keys of llama.cpp's chat_template_caps)."""
        if self._caps is not None:
            return self._caps
        user = {"role": "user", "content": "Hey"}
        sys_marker, tool_marker, fn_marker, arg_marker = (
            "<SysMarkerQz>", "tool_marker_qz", "fn_marker_qz", "arg_marker_qz")
        reason_marker, resp_marker, id_marker = "<ReasonMarkerQz>", "<RespMarkerQz>", "call_idmarkerqz"

        def call(name: str, args: Any, cid: str = "call_1") -> dict:
            return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}

        def asst(calls: list, content: Any = None) -> dict:
            return {"role": "assistant", "content": content, "tool_calls": calls}

        caps: dict[str, bool] = {}
        caps["supports_system_role"] = sys_marker in self._probe(
            [{"role": "system", "content": sys_marker}, user])
        dummy_tool = {"type": "function", "function": {
            "name": tool_marker, "description": "probe",
            "parameters": {"type": "object", "properties": {arg_marker: {"type": "string"}},
                           "required": [arg_marker]}}}
        caps["supports_tools"] = tool_marker in self._probe([user], [dummy_tool], gen=True)
        obj_out = self._probe([user, asst([call(fn_marker, {arg_marker: "x"})]),
                               {"role": "user", "content": "ok"}], [dummy_tool])
        str_out = self._probe([user, asst([call(fn_marker, json.dumps({arg_marker: "x"}))]),
                               {"role": "user", "content": "ok"}], [dummy_tool])
        caps["supports_tool_calls"] = fn_marker in obj_out or fn_marker in str_out
        caps["requires_object_arguments"] = (arg_marker in obj_out) and (arg_marker not in str_out)
        two = self._probe([user, asst([call(fn_marker, {arg_marker: "x"}, "call_1"),
                                       call(fn_marker + "2", {arg_marker: "y"}, "call_2")]),
                           {"role": "user", "content": "ok"}], [dummy_tool])
        caps["supports_parallel_tool_calls"] = fn_marker in two and fn_marker + "2" in two
        resp = self._probe([user, asst([call(fn_marker, {arg_marker: "x"}, id_marker)]),
                            {"role": "tool", "tool_call_id": id_marker, "name": fn_marker,
                             "content": resp_marker}], [dummy_tool], gen=True)
        caps["supports_tool_responses"] = resp_marker in resp
        caps["supports_tool_call_id"] = id_marker in resp
        caps["requires_non_null_content"] = (
            caps["supports_tool_calls"] and not self._probe(
                [user, asst([call(fn_marker, {arg_marker: "x"})], None)], [dummy_tool])
            and bool(self._probe([user, asst([call(fn_marker, {arg_marker: "x"})], "")], [dummy_tool])))
        plain = self._probe([{"role": "user", "content": "<PlainMarkerQz>"}], gen=True)
        typed = self._probe([{"role": "user", "content": [{"type": "text", "text": "<PlainMarkerQz>"}]}],
                            gen=True)
        caps["requires_typed_content"] = ("<PlainMarkerQz>" not in plain) and ("<PlainMarkerQz>" in typed)
        caps["supports_preserve_reasoning"] = reason_marker in self._probe(
            [user, {"role": "assistant", "content": "Hi", "reasoning_content": reason_marker},
             {"role": "user", "content": "more"}], gen=True)
        caps["supports_reasoning"] = "reasoning_content" in self.source or "<think>" in self.source
        self._caps = caps
        return caps


# -- detection and resolution -----------------------------------------------------------

def detect_named_template(source: str) -> str | None:
    """The built-in whose format a template (or template name) has, by llama.cpp's rules
    (substring checks on the template text); None when nothing matches."""
    if source in NAMED_TEMPLATES:
        return source
    has = source.__contains__
    if has("<|im_start|>"):
        return "phi4" if has("<|im_sep|>") else ("chatml" if not has("<end_of_utterance>") else None)
    if source.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            if has(" [INST]"):
                return "mistral-v1"
            if has('"[INST]"'):
                return "mistral-v3-tekken"
            return "mistral-v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        if has("<<SYS>>"):
            return "llama2-sys"
        return "llama2"
    if has("<|assistant|>") and has("<|end|>"):
        return "phi3"
    if has("<|assistant|>") and has("<|user|>"):
        return "falcon3" if has("</s>") else None
    if has("<|user|>") and has("<|endoftext|>"):
        return "zephyr"
    if has("<start_of_turn>"):
        return "gemma"
    if has("USER: ") and has("ASSISTANT: "):
        return "vicuna-orca" if has("SYSTEM: ") else "vicuna"
    if has("<|START_OF_TURN_TOKEN|>") and has("<|USER_TOKEN|>"):
        return "command-r"
    if has("<|start_header_id|>") and has("<|end_header_id|>"):
        return "llama3"
    if has("<｜Assistant｜>") and has("<｜User｜>") and has("<｜end▁of▁sentence｜>"):
        return "deepseek3"
    if has("<|header_start|>") and has("<|header_end|>"):
        return "llama4"
    return None


def _pick_model_template(model_template: Any) -> str | None:
    if model_template is None or isinstance(model_template, str):
        return model_template or None
    if isinstance(model_template, list):  # HF: [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in model_template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        for t in named.values():
            if isinstance(t, str):
                return t
        return None
    raise InvalidRequest("the model's chat_template must be a string or a list of {name, template}")


def resolve_chat_template(cli_template: str | None, cli_template_file: str | None,
                          model_template: Any, bos_token: str | None = None,
                          eos_token: str | None = None, jinja: bool = True) -> ChatTemplate:
    """--chat-template-file > --chat-template (a built-in name, or the template text itself)
    > the model's own (tokenizer_config.json) > chatml."""
    name: str | None = None
    if cli_template_file:
        try:
            with open(cli_template_file, encoding="utf-8") as f:
                source = f.read()
        except OSError as e:
            raise InvalidRequest(f"cannot read --chat-template-file {cli_template_file!r}: {e}") from e
    elif cli_template:
        if cli_template in NAMED_TEMPLATES:
            name, source = cli_template, NAMED_TEMPLATES[cli_template]
        else:
            source = cli_template
    else:
        source = _pick_model_template(model_template)
        if source is None:
            name, source = "chatml", NAMED_TEMPLATES["chatml"]
    if not jinja:
        detected = name or detect_named_template(source) or "chatml"
        return ChatTemplate(NAMED_TEMPLATES[detected], bos_token, eos_token, name=detected, jinja=False)
    return ChatTemplate(source, bos_token, eos_token, name=name, jinja=True)
