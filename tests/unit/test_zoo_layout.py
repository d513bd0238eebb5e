"""Hugging Face / onnxruntime-genai directory conventions, on copies of a zoo model whose side
files are rewritten per test (the graph and tokenizer are symlinked, not copied)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from utils import REPO_ROOT, ServerProcess

pytestmark = [pytest.mark.feature("zoo"), pytest.mark.profile("refserver"), pytest.mark.golden, pytest.mark.needs_flags]

ZOO = REPO_ROOT / "tests" / "fixtures" / "zoo"
BASE = ZOO / "llama-fp32"
if not BASE.is_dir():
    pytest.skip(f"no zoo in {ZOO}; build it with python -m tools.make_zoo", allow_module_level=True)
EXPECTED = json.loads((ZOO / "llama-expected.json").read_text())
MESSAGES = [{"role": "user", "content": "Hi"}]
#: renders `tools` itself, so no generic tool prompt is injected into the messages
TOOL_USE = "TOOLS {% for t in tools or [] %}{{ t.function.name }} {% endfor %}{{ messages[-1].content }}"
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def model_copy(tmp_path: Path, files: dict | None = None, graphs: tuple[str, ...] = ("model.onnx",)) -> Path:
    """A model folder linking BASE's graph (as each of `graphs`) and tokenizer, with the JSON
    side files of BASE except those given in `files` (name -> dict or text)."""
    out = tmp_path / "model"
    out.mkdir()
    for graph in graphs:
        (out / graph).symlink_to(BASE / "model.onnx")
    (out / "model.onnx.data").symlink_to(BASE / "model.onnx.data")
    (out / "tokenizer.json").symlink_to((BASE / "tokenizer.json").resolve())
    for name in ("config.json", "generation_config.json", "genai_config.json", "tokenizer_config.json"):
        shutil.copy(BASE / name, out / name)
    for name, content in (files or {}).items():
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return out


def tokenizer_config(**changes) -> dict:
    config = json.loads((BASE / "tokenizer_config.json").read_text())
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def serve(model: Path | str, **attrs) -> ServerProcess:
    return ServerProcess(model=str(model), threads=1, **{"n_slots": 2, **attrs}).start()


def render(server, tools=None) -> str:
    return server.ok("/apply-template", {"messages": MESSAGES, **({"tools": TOOLS} if tools else {})})["prompt"]


def test_chat_template_jinja_beside_tokenizer_config(tmp_path):
    model = model_copy(tmp_path, {"tokenizer_config.json": tokenizer_config(chat_template=None),
                                  "chat_template.jinja": "JINJA {{ messages[0].content }}"})
    assert render(serve(model)) == "JINJA Hi"


def test_named_templates_tool_use_when_tools(tmp_path):
    named = [{"name": "default", "template": "DEFAULT {{ messages[0].content }}"},
             {"name": "tool_use", "template": TOOL_USE}]
    server = serve(model_copy(tmp_path, {"tokenizer_config.json": tokenizer_config(chat_template=named)}))
    assert render(server) == "DEFAULT Hi"
    assert render(server, tools=True) == "TOOLS get_time Hi"
    props = server.props()
    assert props["chat_template_names"] == ["default", "tool_use"]
    assert props["chat_template_tool_use"] == named[1]["template"]


def test_additional_chat_templates_folder(tmp_path):
    """transformers 5 saves named templates as additional_chat_templates/NAME.jinja."""
    model = model_copy(tmp_path, {"tokenizer_config.json": tokenizer_config(chat_template=None),
                                  "chat_template.jinja": "D {{ messages[0].content }}"})
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool_use.jinja").write_text(TOOL_USE)
    server = serve(model)
    assert (render(server), render(server, tools=True)) == ("D Hi", "TOOLS get_time Hi")


def test_generation_config_eos_list_stops_generation(tmp_path):
    """Every id of generation_config.json's `eos_token_id` list ends a generation."""
    # the first prompt whose greedy ids bring a new token after the first one: it becomes an EOS
    ref, stop_at = next((ref, i) for ref in EXPECTED["prompts"].values()
                        for i in range(1, len(ref["greedy_ids"])) if ref["greedy_ids"][i] not in ref["greedy_ids"][:i])
    ids = ref["greedy_ids"]
    generation = {"bos_token_id": 0, "eos_token_id": [1, 3, ids[stop_at]], "pad_token_id": 1}
    server = serve(model_copy(tmp_path, {"generation_config.json": generation}))
    body = server.ok("/completion", {"prompt": ref["prompt_ids"], "n_predict": 12, "temperature": 0,
                                     "return_tokens": True})
    assert body["tokens"][:stop_at] == ids[:stop_at]
    assert body["stop_type"] == "eos" and len(body["tokens"]) <= stop_at + 1


def test_added_tokens_special_or_not():
    """A special added token is plain text when parse_special is off; a non-special one
    (`<tool_call>`, special: false) stays one token, as transformers encodes it."""
    server = serve(BASE)
    tool_call = server.tokenize("<tool_call>", parse_special=False)
    im_start = server.tokenize("<|im_start|>", parse_special=False)
    assert tool_call == [4096]
    assert len(im_start) > 1 and 2 not in im_start
    assert server.tokenize("<|im_start|>", parse_special=True) == [2]


def test_genai_search_defaults_unless_flags(tmp_path):
    genai = json.loads((BASE / "genai_config.json").read_text())
    genai["search"].update({"temperature": 0.3, "top_k": 7, "top_p": 0.5, "max_length": 256})
    model = model_copy(tmp_path, {"genai_config.json": genai})
    params = serve(model, temperature=None).props()["default_generation_settings"]
    assert (params["params"]["temperature"], params["params"]["top_k"], params["params"]["top_p"]) == (0.3, 7, 0.5)
    assert params["n_ctx"] <= 256
    flagged = serve(model, temperature=0.9, n_ctx=512, n_slots=1).props()["default_generation_settings"]
    assert flagged["params"]["temperature"] == 0.9 and flagged["n_ctx"] == 512


def test_model_flag_naming_the_onnx_file():
    server = serve(BASE / "model.onnx")
    assert server.props()["model_path"] == str(BASE.resolve())
    assert server.tokenize("Hi")


def test_folder_with_several_graphs(tmp_path):
    model = model_copy(tmp_path, graphs=("decoder_a.onnx", "decoder_b.onnx"))
    server = ServerProcess(model=str(model), threads=1)
    with pytest.raises(RuntimeError, match="exited with code 1") as info:
        server.start()
    assert "decoder_a.onnx, decoder_b.onnx" in str(info.value) and "-m " in str(info.value)
    ref = EXPECTED["prompts"]["chat"]
    body = serve(model / "decoder_b.onnx").ok("/completion", {
        "prompt": ref["prompt_ids"], "n_predict": 12, "temperature": 0, "ignore_eos": True, "return_tokens": True})
    assert body["tokens"] == ref["greedy_ids"]
