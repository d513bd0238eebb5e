"""Chat templates: sandboxed Jinja with Hugging Face `apply_chat_template` semantics.

- Environment: `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with
  the `loopcontrols` extension and a no-op `{% generation %}` block (as HF has);
  globals `raise_exception(msg)` (-> InvalidRequest with the template's message) and
  `strftime_now(fmt)` (REFSERVER_NOW pins "now"); filter `tojson` like HF's (no HTML
  escaping, keeps non-ASCII).
- Messages reach the template as transformers hands them (`template_messages`): None-valued
  keys dropped, reasoning under `reasoning_content` and `thinking`, tool-call arguments as
  objects; where a template fails on that form, null content as "" and arguments as JSON
  text are tried before the error is reported.
- Variables: `messages, tools, documents, add_generation_prompt, bos_token, eos_token`,
  llama.cpp's extras (`enable_thinking` true, `date_string`, firefunction's `functions` /
  `datetime`), and the request's `chat_template_kwargs`, which override all but the first four.
- Prefill: a trailing assistant message (without tool_calls) is not given to the
  template; the messages before it are rendered with add_generation_prompt=True and its
  content is appended verbatim (llama.cpp), unless add_generation_prompt is false or
  `continue_final_message` is true (transformers' tag-and-cut).
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
import os
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from refserver.chat.formats import detect_tool_format
from refserver.chat.messages import normalize_messages, template_messages
from refserver.chat.named_templates import NAMED_TEMPLATES
from refserver.errors import InvalidRequest


class _TemplateRaised(Exception):
    """raise_exception() inside a template."""


def _raise_exception(message: Any = "") -> None:
    raise _TemplateRaised(str(message))


def template_now() -> datetime:
    """"Now" as templates see it: REFSERVER_NOW (ISO 8601) pins it, so tests (and users who
    want reproducible prompts) get the same `strftime_now` / `date_string` every time."""
    pinned = os.environ.get("REFSERVER_NOW")
    if not pinned:
        return datetime.now()
    try:
        return datetime.fromisoformat(pinned)
    except ValueError as e:
        raise InvalidRequest(f"REFSERVER_NOW={pinned!r} is not an ISO 8601 date-time "
                             "(e.g. 2024-07-26T09:30:00)") from e


def _strftime_now(fmt: str) -> str:
    return template_now().strftime(fmt)


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


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


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
            self._free = jinja2.meta.find_undeclared_variables(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as e:
            raise InvalidRequest(f"chat template syntax error at line {e.lineno}: {e.message}") from e
        self._caps: dict | None = None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, jinja={self.jinja})"

    # -- rendering --------------------------------------------------------------------
    def _extra_context(self, tools: list | None) -> dict[str, Any]:
        """What llama.cpp gives templates beyond transformers' variables: thinking on,
        `date_string`, and firefunction-v2's `functions` / `datetime` where the template
        reads them without defining them. The request's chat_template_kwargs override these."""
        now = template_now()
        ctx: dict[str, Any] = {"enable_thinking": True, "date_string": now.strftime("%d %b %Y")}
        if "functions" in self._free and "datetime" in self._free:
            ctx["functions"] = json.dumps(tools, indent=2) if tools else ""
            ctx["datetime"] = now.strftime("%b %d %Y %H:%M:%S GMT")
        return ctx

    def _render_raw(self, messages: list, tools: list | None, add_generation_prompt: bool,
                    template_kwargs: dict | None) -> str:
        ctx: dict[str, Any] = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                               **self._extra_context(tools), **(template_kwargs or {}),
                               "messages": messages, "tools": tools, "documents": None,
                               "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(**ctx)
        except _TemplateRaised:
            raise
        except jinja2.TemplateError as e:
            raise InvalidRequest(f"chat template error: {type(e).__name__}: {e}") from e
        except InvalidRequest:
            raise
        except Exception as e:  # TypeError, KeyError, ... raised while rendering
            raise InvalidRequest(f"chat template error: {type(e).__name__}: {e}") from e

    def _render_messages(self, msgs: list[dict], tools: list | None, add_generation_prompt: bool,
                         template_kwargs: dict | None) -> str:
        """Render transformers' view of the messages; where the template fails on it (not by
        its own raise_exception), retry with null content as "" and/or arguments as JSON
        text, the forms llama.cpp and OpenAI clients hand templates."""
        calls = [c for m in msgs if m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)
                 for c in m["tool_calls"]]
        has_null = any("tool_calls" in m and m.get("content") is None for m in msgs)
        has_objects = any(not isinstance(c["function"].get("arguments"), str) for c in calls)
        variants = [(e, s) for e, s in ((False, False), (True, False), (False, True), (True, True))
                    if (has_null or not e) and (has_objects or not s)]
        first_error: InvalidRequest | None = None
        for empty_null, string_args in variants:
            view = template_messages(msgs, empty_null_content=empty_null, string_arguments=string_args)
            try:
                return self._render_raw(view, tools, add_generation_prompt, template_kwargs)
            except _TemplateRaised as e:
                raise InvalidRequest(f"chat template error: {e}") from e
            except InvalidRequest as e:
                first_error = first_error or e
        assert first_error is not None
        raise first_error

    def render(self, messages: Any, tools: list | None = None, add_generation_prompt: bool | None = None,
               template_kwargs: dict | None = None, continue_final_message: bool = False) -> str:
        """The prompt for `messages`. A trailing assistant message is a prefill (llama.cpp):
        the conversation before it gets the generation prompt and its text is appended --
        unless add_generation_prompt is false (then it is rendered as a finished turn) or
        continue_final_message is set (transformers: the turn is rendered open)."""
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array")
        if tools and not self.jinja:
            raise InvalidRequest("tools require --jinja (the server was started with --no-jinja)")
        if template_kwargs is not None and not isinstance(template_kwargs, dict):
            raise InvalidRequest("'chat_template_kwargs' must be an object")
        if continue_final_message and add_generation_prompt:
            raise InvalidRequest("'continue_final_message' and 'add_generation_prompt' cannot both be true: "
                                 "continue the final message, or start a new assistant turn")
        msgs = normalize_messages(messages)
        tools = tools or None
        if tools and not self.caps["supports_tools"]:
            msgs = self.inject_tools(msgs, tools)
            tools = None
        if continue_final_message:
            return self._render_continued(msgs, tools, template_kwargs)
        if (add_generation_prompt is not False and msgs[-1]["role"] == "assistant"
                and not msgs[-1].get("tool_calls")):
            text = self._render_messages(msgs[:-1], tools, True, template_kwargs)
            return text + (msgs[-1]["content"] or "")
        return self._render_messages(msgs, tools, add_generation_prompt is not False, template_kwargs)

    def _render_continued(self, msgs: list[dict], tools: list | None, template_kwargs: dict | None) -> str:
        """transformers' continue_final_message: render the final message with a tag after its
        text and cut the prompt at the tag, so the turn's closing markup is left out."""
        final = msgs[-1].get("content")
        if not final:
            raise InvalidRequest("'continue_final_message' needs a final message with text content to continue")
        msgs = msgs[:-1] + [{**msgs[-1], "content": final + _CONTINUE_TAG}]
        text = self._render_messages(msgs, tools, False, template_kwargs)
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise InvalidRequest("'continue_final_message': this chat template does not render the final "
                                 "message's text as given, so it cannot be continued")
        at = text.rindex(tag)
        if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            return text[:at]
        return text[:at].rstrip()

    def inject_tools(self, msgs: list[dict], tools: list) -> list[dict]:
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

    @property
    def tool_call_format(self) -> str | None:
        """The tool-call format of this template's model (`refserver.chat.formats`), detected
        from the template; when there is none and the template cannot show tools, Hermes
        `<tool_call>`, the format refserver's own tool prompt asks for."""
        detected = detect_tool_format(self.source)
        if detected is None and not self.caps["supports_tools"]:
            return "hermes"
        return detected

    # -- capabilities -----------------------------------------------------------------
    def _probe(self, messages: list, tools: list | None = None, gen: bool = False) -> str:
        try:
            return self._render_raw(template_messages(messages), tools, gen, None)
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
        # any effect of `tools` on the prompt counts (some templates only test `tools|length`)
        # (DeepSeek V3.1 shows them only beside a system message)
        caps["supports_tools"] = any(
            bool(with_tools) and with_tools != self._probe(msgs, gen=True)
            for msgs in ([user], [{"role": "system", "content": "Hi"}, user])
            for with_tools in [self._probe(msgs, [dummy_tool], gen=True)])
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
