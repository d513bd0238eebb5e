"""`/v1/completions` `suffix`: fill-in-the-middle on a model whose vocabulary has FIM
tokens ([BOS] PRE prefix SUF suffix MID), a clear 400 on one without."""

from __future__ import annotations

import shutil

import pytest
from utils import REPO_ROOT, TARGET, ServerProcess, error_of

completion = pytest.mark.feature("completion")
pytestmark = pytest.mark.profile("refserver")
EMBEDDED = REPO_ROOT / "refserver" / "models" / "chat"
# The embedded model has no FIM tokens: a copy of it renames three of its special tokens,
# which is enough to check how the prompt is built (not what the model writes).
RENAMES = {"<tool_call>": "<|fim_prefix|>", "</tool_call>": "<|fim_suffix|>", "<|im_start|>": "<|fim_middle|>"}


def _fim_model(tmp_path):
    out = tmp_path / "fim-model"
    out.mkdir()
    for f in EMBEDDED.iterdir():
        if f.name.startswith("model.onnx"):
            (out / f.name).symlink_to(f)
        elif f.suffix == ".json":
            text = f.read_text()
            for old, new in RENAMES.items():
                text = text.replace(old, new)
            (out / f.name).write_text(text)
        else:
            shutil.copy(f, out / f.name)
    return out


@completion
@pytest.mark.needs_flags
@pytest.mark.skipif(not TARGET.runs_refserver, reason="builds an ONNX model directory")
def test_suffix_is_fill_in_the_middle(tmp_path):
    server = ServerProcess(model=str(_fim_model(tmp_path)), n_ctx=512)
    server.start()
    pre, suf, mid = (server.tokenize(t)[0] for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert len({pre, suf, mid}) == 3
    prefix, suffix = "The cat sat on the", " and slept."
    body = server.ok("/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 3, "temperature": 0})
    n_bos = len(server.tokenize(prefix, add_special=True)) - len(server.tokenize(prefix))
    expected = n_bos + 3 + len(server.tokenize(prefix)) + len(server.tokenize(suffix, parse_special=False))
    assert body["usage"]["prompt_tokens"] == expected
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


@completion
def test_suffix_without_fim_tokens_is_400(chat_server):
    res = chat_server.post("/v1/completions", {"prompt": "The cat", "suffix": " slept.", "max_tokens": 2})
    if TARGET.runs_refserver:
        assert res.status_code == 400 and "fill-in-the-middle" in error_of(res)["message"]
    else:
        assert res.status_code in (200, 400)
