"""Freeze how Hugging Face transformers renders real chat templates, as test data.

For every template in ../shared/templates/ (the chat templates llama.cpp vendors for its
tests) this renders a fixed set of conversations (tests/fixtures/template_cases.json) with
transformers' `tokenizer.apply_chat_template(..., tokenize=False)`, using the embedded chat
model's tokenizer (so the special tokens are the ones a server started with
`--chat-template-file` presents), and writes the renderings (or the error transformers
raised) to tests/fixtures/template_renderings.json. The suite compares `/apply-template`
against that file and so never needs transformers.

Dev only: needs `pip install 'transformers==5.*' jinja2` (no torch), in a venv of its own:

    python -m venv /work/venvs/templates && /work/venvs/templates/bin/pip install 'transformers==5.*' jinja2
    /work/venvs/templates/bin/python -m tools.freeze_templates   # from the repository root

What transformers is given beyond a case's own fields (each is llama.cpp's behaviour,
which refserver follows, declared here so the frozen data says what it measures):
- "now" is pinned (strftime_now) to FROZEN_NOW. refserver is pinned the same way with
  REFSERVER_NOW. It is 26 Jul 2024 on purpose: the Llama 3.x templates default
  `date_string` to "26 Jul 2024", so the `date_string` refserver provides agrees with it.
- `enable_thinking` is true unless the case says otherwise (llama.cpp's default).
- `date_string` ("%d %b %Y" of now), and for templates that read them without defining
  them, firefunction-v2's `functions` (the tools as indented JSON) and `datetime`.
- Where transformers' own rendering fails (TypeError, undefined value; not the template's
  raise_exception) on a case with `content: null` beside `tool_calls` or with object
  arguments, refserver retries with content "" and/or arguments as JSON text; the entry
  then also holds transformers' rendering of that variant ("fallback").
- Where a template ignores `tools` (or fails on them), refserver describes the tools in a system message
  instead (a deliberate difference); for those cases transformers renders the messages
  refserver builds (refserver's own injection function), so the template itself is still
  compared, and the entry says "tools_injected".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES_FILE = REPO / "tests" / "fixtures" / "template_cases.json"
OUT_FILE = REPO / "tests" / "fixtures" / "template_renderings.json"
TEMPLATES_DIR = Path(os.environ.get("REFSERVER_SHARED", REPO.parent / "shared")) / "templates"
FROZEN_NOW = dt.datetime(2024, 7, 26, 9, 30, 0)


def _pin_now() -> None:
    """strftime_now in transformers reads `datetime.now()` of its module at call time."""
    from transformers.utils import chat_template_utils

    class _Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return FROZEN_NOW

    chat_template_utils.datetime = _Frozen


def _llama_cpp_context(source: str, tools: list | None) -> dict:
    """The variables llama.cpp (and refserver) give a template beyond transformers'."""
    import jinja2
    import jinja2.meta

    bare = re.sub(r"{%-?\s*(?:end)?generation\s*-?%}", "", source)
    free = jinja2.meta.find_undeclared_variables(
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(bare))
    ctx: dict = {"enable_thinking": True, "date_string": FROZEN_NOW.strftime("%d %b %Y")}
    if "functions" in free and "datetime" in free:
        ctx["functions"] = json.dumps(tools, indent=2) if tools else ""
        ctx["datetime"] = FROZEN_NOW.strftime("%b %d %Y %H:%M:%S GMT")
    return ctx


def _render(tok, source: str, case: dict) -> dict:
    kwargs = {**_llama_cpp_context(source, case.get("tools")), **case.get("chat_template_kwargs", {})}
    try:
        text = tok.apply_chat_template(
            case["messages"], tools=case.get("tools"), chat_template=source, tokenize=False,
            add_generation_prompt=case.get("add_generation_prompt", True),
            continue_final_message=case.get("continue_final_message", False), **kwargs)
    except Exception as e:  # noqa: BLE001 -- what transformers raised is the frozen answer
        return {"error": str(e), "error_type": type(e).__name__}
    return {"prompt": text}


def _fallback(tok, source: str, case: dict) -> dict | None:
    """transformers' rendering of the first variant refserver falls back to, if any renders."""
    for empty_null, string_args in ((True, False), (False, True), (True, True)):
        messages = [_variant(m, empty_null, string_args) for m in case["messages"]]
        if messages == case["messages"]:
            continue
        result = _render(tok, source, {**case, "messages": messages})
        if "prompt" in result:
            return {"prompt": result["prompt"], "empty_null_content": empty_null,
                    "string_arguments": string_args}
    return None


def _variant(msg: dict, empty_null: bool, string_args: bool) -> dict:
    if "tool_calls" not in msg:
        return msg
    msg = dict(msg)
    if empty_null and msg.get("content") is None:
        msg["content"] = ""
    if string_args:
        msg["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(
            c["function"]["arguments"], ensure_ascii=False)}} for c in msg["tool_calls"]]
    return msg


def _cannot_render_tools(tok, source: str, case: dict) -> bool:
    """True when a user turn (alone, or after a system turn) renders the same with and without
    the case's tools, or fails with them: refserver then describes the tools in a system message."""
    user = next(m for m in case["messages"] if m["role"] == "user")
    for messages in ([user], [{"role": "system", "content": "Hi"}, user]):
        with_tools = _render(tok, source, {"messages": messages, "tools": case["tools"]})
        if "error" not in with_tools and with_tools != _render(tok, source, {"messages": messages}):
            return False
    return True


def _injected(source: str, case: dict) -> dict:
    """The case as refserver hands it to a template that ignores tools."""
    from refserver.chat.messages import normalize_messages
    from refserver.chat.templates import ChatTemplate

    tmpl = ChatTemplate(source, "<s>", "</s>")
    messages = tmpl.inject_tools(normalize_messages(case["messages"]), case["tools"])
    return {**case, "messages": messages, "tools": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--templates", type=Path, default=TEMPLATES_DIR)
    ap.add_argument("--out", type=Path, default=OUT_FILE)
    args = ap.parse_args()
    import transformers
    from transformers import AutoTokenizer

    _pin_now()
    tok = AutoTokenizer.from_pretrained(str(REPO / "refserver" / "models" / "chat"))
    cases = json.loads(CASES_FILE.read_text())
    out: dict = {"transformers": transformers.__version__, "now": FROZEN_NOW.isoformat(),
                 "special_tokens": tok.special_tokens_map, "templates": {}}
    for path in sorted(args.templates.glob("*.jinja")):
        source = path.read_text(encoding="utf-8")
        entry: dict = {"sha256": hashlib.sha256(source.encode()).hexdigest(), "cases": {}}
        for name, case in cases.items():
            injected = bool(case.get("tools")) and _cannot_render_tools(tok, source, case)
            if injected:
                case = _injected(source, case)
            result = _render(tok, source, case)
            if result.get("error_type") not in (None, "TemplateError"):
                fallback = _fallback(tok, source, case)
                if fallback:
                    result["fallback"] = fallback
            if injected:
                result["tools_injected"] = True
            entry["cases"][name] = result
        out["templates"][path.name] = entry
        errors = sum("error" in r for r in entry["cases"].values())
        print(f"{path.name}: {len(cases) - errors} rendered, {errors} raised", file=sys.stderr)
    args.out.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
