"""TextStream: byte assembly, UTF-8 hold-back and stop-string hold-back, table-driven."""

from __future__ import annotations

import pytest

from refserver.engine.textstream import TextStream, partial_stop_len

pytestmark = [pytest.mark.feature("sampling"), pytest.mark.profile("refserver")]

EMOJI = "😀".encode()  # 4 bytes

# (pieces as bytes, stops, expected released chunks per push, stop word, final flush)
CASES = [
    ("plain", [b"Hel", b"lo"], [], ["Hel", "lo"], None, ""),
    ("stop in one token", [b"Hi", b" END", b" x"], ["END"], ["Hi", " "], "END", ""),
    ("stop split over two tokens", [b"a wor", b"ld b"], ["world"], ["a ", ""], "world", ""),
    ("prefix held then released", [b"ab", b"x"], ["abc"], ["", "abx"], None, ""),
    ("prefix held to the end", [b"xy", b"ab"], ["abc"], ["xy", ""], None, "ab"),
    ("emoji split over tokens", [b"hi ", EMOJI[:1], EMOJI[1:3], EMOJI[3:]], [], ["hi ", "", "", "😀"], None, ""),
    ("emoji then stop", [EMOJI[:2], EMOJI[2:] + b"!", b"STOP"], ["STOP"], ["", "😀!", ""], "STOP", ""),
    ("earliest of two stops", [b"one two three"], ["three", "two"], ["one "], "two", ""),
    ("partial utf-8 at the end", [b"ok", EMOJI[:2]], [], ["ok", ""], None, "\ufffd"),
    ("two-byte char split", ["é".encode()[:1], "é".encode()[1:]], ["x"], ["", "é"], None, ""),
]


@pytest.mark.parametrize("name,pieces,stops,chunks,word,tail", CASES, ids=[c[0] for c in CASES])
def test_textstream(name, pieces, stops, chunks, word, tail):
    ts = TextStream(stops)
    got, found = [], None
    for p in pieces:
        text, w = ts.push(p)
        got.append(text)
        found = found or w
        if w:
            break
    assert got == chunks
    assert found == word
    assert ts.flush() == tail


@pytest.mark.parametrize("text,stops,n", [("abc", ["cde"], 1), ("abcd", ["cde"], 2), ("x", ["y"], 0),
                                          ("aa", ["aaa"], 2), ("", ["a"], 0)])
def test_partial_stop_len(text, stops, n):
    assert partial_stop_len(text, stops) == n
