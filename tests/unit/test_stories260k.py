"""llama.cpp's own test model, stories260K, served from both ONNX layouts in ../shared:
refserver reproduces the greedy ids in verification.json (which are llama.cpp's)."""

from __future__ import annotations

import json

import pytest
from utils import STORIES260K_DIR, ServerPreset

pytestmark = [pytest.mark.feature("engine"), pytest.mark.needs_shared, pytest.mark.golden,
              pytest.mark.needs_flags, pytest.mark.profile("refserver")]

LAYOUTS = ["plain", "genai"]


def _verification() -> dict:
    path = STORIES260K_DIR / "verification.json"
    return json.loads(path.read_text())["prompts"] if path.exists() else {}


PROMPTS = _verification()
PROMPT_IDS = list(PROMPTS) or ["(absent)"]


@pytest.fixture(scope="module", params=LAYOUTS)
def stories(request, server_pool):
    return server_pool(request.param, lambda: ServerPreset.stories260k(request.param))


@pytest.mark.parametrize("prompt", PROMPT_IDS)
def test_greedy_ids_match_llama_cpp(stories, prompt):
    ref = PROMPTS[prompt]
    body = stories.ok("/completion", {"prompt": ref["prompt_ids"], "temperature": 0, "n_predict": 64,
                                      "ignore_eos": True, "return_tokens": True})
    assert body["tokens"] == ref["greedy_ids_64"]
    assert body["tokens_evaluated"] == len(ref["prompt_ids"])


@pytest.mark.parametrize("prompt", PROMPT_IDS)
def test_greedy_ids_streamed(stories, prompt):
    ref = PROMPTS[prompt]
    events = stories.make_stream_request("POST", "/completion", {
        "prompt": ref["prompt_ids"], "temperature": 0, "n_predict": 64, "ignore_eos": True, "stream": True}).read_all()
    assert [t for ev in events for t in ev.get("tokens", []) if not ev["stop"]] == ref["greedy_ids_64"]


@pytest.mark.parametrize("prompt", PROMPT_IDS)
def test_tokenizer_matches_llama_cpp(stories, prompt):
    ref = PROMPTS[prompt]
    assert stories.tokenize(prompt, add_special=True) == ref["prompt_ids"]
    assert len(ref["prompt_ids"]) == ref["n_prompt_tokens_with_bos"]


def test_string_prompt_and_detokenized_prompt(stories):
    text = "I believe the meaning of life is"
    body = stories.ok("/completion", {"prompt": text, "temperature": 0, "n_predict": 8})
    assert body["timings"]["prompt_n"] + body["timings"]["cache_n"] == 18
    assert body["prompt"] == "<s> " + text
    assert body["content"].strip().startswith("a big, small bo")


def test_slots_share_the_context(stories):
    props = stories.props()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 512  # unified KV: all of -c 512
    assert stories.ok("/v1/models")["data"][0]["id"] == "tinyllama-2"


def test_model_without_template_falls_back_to_chatml(stories):
    prompt = stories.ok("/apply-template", {"messages": [{"role": "user", "content": "Hi"}]})["prompt"]
    assert "<|im_start|>user\nHi<|im_end|>" in prompt
    body = stories.ok("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert body["choices"][0]["message"]["role"] == "assistant"
