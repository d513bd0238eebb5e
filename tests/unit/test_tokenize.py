"""/tokenize and /detokenize (llama.cpp test_tokenize.py, CONTRACT §1)."""

from __future__ import annotations

import pytest
from utils import client_error_status_ok, error_of

pytestmark = [pytest.mark.feature("tokenize"), pytest.mark.profile("llamacpp")]

TEXTS = ["What is the capital of France?", "Héllo wörld, ça va?", "日本語のテキスト", "emoji 😀🎉 here",
         "line one\nline two\ttab", "  leading and  double  spaces"]


@pytest.mark.parametrize("text", TEXTS, ids=["ascii", "accents", "cjk", "emoji", "whitespace", "spaces"])
def test_round_trip(chat_server, text):
    tokens = chat_server.tokenize(text)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert chat_server.ok("/detokenize", {"tokens": tokens})["content"] == text


def test_add_special_puts_bos_first(chat_server):
    plain = chat_server.tokenize("Hello")
    special = chat_server.tokenize("Hello", add_special=True)
    bos = chat_server.tokenize("", add_special=True)
    if not bos:
        pytest.skip("the model adds no BOS")
    assert special == bos + plain
    assert plain[:1] != bos


def test_default_is_no_special(chat_server):
    assert chat_server.ok("/tokenize", {"content": "Hello"})["tokens"] == chat_server.tokenize("Hello")


def test_empty_content(chat_server):
    assert chat_server.ok("/tokenize", {"content": ""})["tokens"] == []
    assert chat_server.ok("/detokenize", {"tokens": []})["content"] == ""


def test_with_pieces(chat_server):
    text = "What is the capital of France?"
    body = chat_server.ok("/tokenize", {"content": text, "with_pieces": True})
    pieces = body["tokens"]
    assert all(set(p) == {"id", "piece"} for p in pieces)
    assert [p["id"] for p in pieces] == chat_server.tokenize(text)
    assert "".join(p["piece"] for p in pieces if isinstance(p["piece"], str)) == text


def test_with_pieces_partial_utf8_is_byte_list(chat_server):
    """A piece that is not valid UTF-8 on its own comes back as a list of byte values."""
    text = "🦙🦜🪿"
    pieces = chat_server.ok("/tokenize", {"content": text, "with_pieces": True})["tokens"]
    raw = b""
    for p in pieces:
        if isinstance(p["piece"], str):
            raw += p["piece"].encode("utf-8")
        else:
            assert all(isinstance(b, int) and 0 <= b < 256 for b in p["piece"])
            raw += bytes(p["piece"])
    assert raw.decode("utf-8").strip() == text
    if len(pieces) > 3:  # split inside characters: some piece must be bytes
        assert any(isinstance(p["piece"], list) for p in pieces)


@pytest.mark.parametrize("marker", ["<|im_start|>", "<|im_end|>"])
def test_parse_special(chat_server, marker):
    special = chat_server.tokenize(marker, parse_special=True)
    literal = chat_server.tokenize(marker, parse_special=False)
    if len(special) != 1:
        pytest.skip(f"{marker} is not a special token of this model")
    assert len(literal) > 1
    assert chat_server.ok("/detokenize", {"tokens": literal})["content"] == marker


@pytest.mark.parametrize("path,body", [
    ("/tokenize", {"content": 123}),
    # llama.cpp tokenizes a missing content as "" (200, no tokens); refserver refuses it
    pytest.param("/tokenize", {}, marks=pytest.mark.extension),
    ("/detokenize", {"tokens": "abc"}), ("/detokenize", {"tokens": [-5]}), ("/detokenize", {"tokens": [10**12]})])
def test_invalid_is_400(chat_server, path, body):
    res = chat_server.post(path, body)
    # 400 from refserver; CONTRACT §6 lets llama.cpp answer type errors with 500
    assert res.status_code == 400 or (res.status_code == 500 and client_error_status_ok(500)), res.body
    error_of(res)
