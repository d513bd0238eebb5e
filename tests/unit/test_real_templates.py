"""Real chat templates (../shared/templates/, as llama.cpp vendors them) rendered as transformers
renders them: every template x case against tests/fixtures/template_renderings.json, which
tools/freeze_templates.py froze from transformers' `apply_chat_template(..., tokenize=False)`.

Two routes, both compared with the same frozen data:
- every template x case through `ChatTemplate.render` (the function `/apply-template` calls);
- one template per family over HTTP: a real server started with `--chat-template-file`,
  every case sent to `/apply-template`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
from utils import SHARED_DIR, TARGET, ServerPreset

from refserver.chat.templates import ChatTemplate
from refserver.errors import InvalidRequest

pytestmark = [pytest.mark.feature("templates"), pytest.mark.profile("refserver")]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = json.loads((FIXTURES / "template_cases.json").read_text())
FROZEN = json.loads((FIXTURES / "template_renderings.json").read_text())
TEMPLATES_DIR = SHARED_DIR / "templates"
NOW = FROZEN["now"]  # the "now" transformers' strftime_now was pinned to
BOS, EOS = FROZEN["special_tokens"]["bos_token"], FROZEN["special_tokens"]["eos_token"]

# one template per family (and per special path: raise_exception, tool injection, fall-backs)
HTTP_TEMPLATES = [
    "Qwen-Qwen3-0.6B.jinja", "Qwen3-Coder.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "fireworks-ai-llama-3-firefunction-v2.jinja", "meetkai-functionary-medium-v3.2.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja", "openai-gpt-oss-120b.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "GLM-4.6.jinja", "moonshotai-Kimi-K2.jinja", "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "ibm-granite-granite-4.0.jinja", "google-gemma-2-2b-it.jinja", "microsoft-Phi-3.5-mini-instruct.jinja",
    "LFM2-8B-A1B.jinja",
]


def template_source(name: str) -> str:
    """The template's text; skips when ../shared is absent or the template changed since freezing."""
    path = TEMPLATES_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found (the real templates live in ../shared/templates beside the checkout)")
    source = path.read_text(encoding="utf-8")
    if hashlib.sha256(source.encode()).hexdigest() != FROZEN["templates"][name]["sha256"]:
        pytest.skip(f"{name} changed since the renderings were frozen: re-run python -m tools.freeze_templates")
    return source


def request_body(case: dict) -> dict:
    """The case as an /apply-template request (fields the case leaves out are left out)."""
    keys = ("messages", "tools", "add_generation_prompt", "continue_final_message", "chat_template_kwargs")
    return {k: case[k] for k in keys if k in case}


def expected(name: str, case_name: str) -> dict:
    """{"prompt": ...} or {"error": ..., "error_type": ...}; the variant refserver falls back to
    where transformers' own rendering failed."""
    frozen = FROZEN["templates"][name]["cases"][case_name]
    return frozen.get("fallback", frozen)


def check(result: dict, want: dict, where: str) -> None:
    """result: {"prompt"} or {"error"} from refserver; want: the frozen expectation."""
    if "prompt" in want:
        assert result.get("prompt") == want["prompt"], f"{where}: rendering differs from transformers"
        return
    assert "error" in result, f"{where}: transformers raised {want['error_type']}: {want['error']}, refserver rendered"
    if want["error_type"] == "TemplateError":  # raise_exception: the template's own message
        assert want["error"] in result["error"], where


@functools.cache
def compiled(name: str) -> ChatTemplate:
    return ChatTemplate(template_source(name), BOS, EOS)


ALL = [(t, c) for t in sorted(FROZEN["templates"]) for c in CASES]


@pytest.mark.parametrize(("name", "case_name"), ALL, ids=[f"{t.removesuffix('.jinja')}-{c}" for t, c in ALL])
def test_render_equals_transformers(name, case_name, monkeypatch):
    monkeypatch.setenv("REFSERVER_NOW", NOW)
    template = compiled(name)
    case = CASES[case_name]
    try:
        result = {"prompt": template.render(
            case["messages"], case.get("tools"), case.get("add_generation_prompt"),
            case.get("chat_template_kwargs"), bool(case.get("continue_final_message")))}
    except InvalidRequest as e:
        result = {"error": str(e)}
    check(result, expected(name, case_name), f"{name} / {case_name}")


@pytest.mark.needs_flags
@pytest.mark.parametrize("name", HTTP_TEMPLATES)
def test_apply_template_http_equals_transformers(name):
    if not TARGET.is_refserver:
        pytest.skip("the frozen renderings hold the embedded model's special tokens")
    server = ServerPreset.one_slot()
    server.chat_template_file = str(TEMPLATES_DIR / name)
    template_source(name)
    server.env = {"REFSERVER_NOW": NOW}
    server.start()
    try:
        for case_name, case in CASES.items():
            res = server.post("/apply-template", request_body(case))
            if res.status_code == 200:
                result = {"prompt": res.body["prompt"]}
            else:
                assert res.status_code == 400, f"{case_name}: HTTP {res.status_code} {res.body}"
                result = {"error": res.body["error"]["message"]}
            check(result, expected(name, case_name), f"{name} / {case_name}")
    finally:
        server.stop()


# -- the behaviours behind the renderings, one by one ----------------------------------------

USER = [{"role": "user", "content": "hi"}]


def test_now_pins_strftime_now_and_date_string(monkeypatch):
    t = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}")
    monkeypatch.setenv("REFSERVER_NOW", "2025-01-02T03:04:05")
    assert t.render(USER) == "2025-01-02|02 Jan 2025"
    assert t.render(USER, template_kwargs={"date_string": "x"}) == "2025-01-02|x"
    monkeypatch.setenv("REFSERVER_NOW", "yesterday")
    with pytest.raises(InvalidRequest, match="REFSERVER_NOW"):
        t.render(USER)


def test_enable_thinking_true_unless_given():
    t = ChatTemplate("{{ enable_thinking }}")
    assert t.render(USER) == "True"
    assert t.render(USER, template_kwargs={"enable_thinking": False}) == "False"


def test_tools_seen_through_length_only_are_not_injected():
    t = ChatTemplate("{% if tools | length > 0 %}[tools on]{% endif %}{{ messages[0].content }}")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert t.caps["supports_tools"]
    assert t.render(USER, tools=[tool]) == "[tools on]hi"


def test_reasoning_given_under_every_name():
    t = ChatTemplate("{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }};{% endfor %}")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "r"}]
    assert t.render(msgs, add_generation_prompt=False) == "/;r/r;"


def test_null_content_beside_tool_calls_is_dropped():
    t = ChatTemplate("{% for m in messages %}{{ 'content' in m }};{% endfor %}")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = USER + [{"role": "assistant", "content": None, "tool_calls": [call]}]
    assert t.render(msgs, add_generation_prompt=False) == "True;False;"


def test_continue_final_message_and_generation_prompt_conflict():
    t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")
    msgs = USER + [{"role": "assistant", "content": "The answer is"}]
    assert t.render(msgs, add_generation_prompt=False, continue_final_message=True) == \
        "<user>hi</user><assistant>The answer is"
    with pytest.raises(InvalidRequest, match="cannot both be true"):
        t.render(msgs, add_generation_prompt=True, continue_final_message=True)


def test_apply_template_http_rejects_both_generation_modes(chat_server):
    if not TARGET.runs_refserver:
        pytest.skip("continue_final_message is refserver's (and vLLM's) field, not llama.cpp's")
    res = chat_server.post("/apply-template", {
        "messages": USER + [{"role": "assistant", "content": "The"}],
        "add_generation_prompt": True, "continue_final_message": True})
    assert res.status_code == 400 and "continue_final_message" in res.body["error"]["message"]


def test_tool_calls_on_other_roles_are_left_to_the_template():
    """Only an assistant's tool_calls are normalized; odd values elsewhere reach the template
    as given (a 400 or a rendering, never a server error)."""
    t = ChatTemplate("{% for m in messages %}{{ m.tool_calls }};{% endfor %}")
    msgs = [{"role": "system", "content": None, "tool_calls": 1}, USER[0],
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]
    assert t.render(msgs, add_generation_prompt=False).startswith("1;;[")
