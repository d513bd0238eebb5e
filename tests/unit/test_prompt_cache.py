"""PromptCache, mirroring mlx-lm's TestLRUPromptCache cases with a tiny fake state."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from refserver.engine.prompt_cache import PromptCache

pytestmark = [pytest.mark.feature("prompt_cache"), pytest.mark.profile("refserver")]


@dataclass
class State:
    length: int
    nbytes_per: int = 1
    tag: str = ""

    @property
    def nbytes(self) -> int:
        return self.length * self.nbytes_per

    def trimmed(self, n: int) -> State:
        return State(min(n, self.length), self.nbytes_per, self.tag)


def put(cache, tokens, kind="assistant", tag="", per=1):
    cache.insert(tokens, State(len(tokens), per, tag), kind)


def test_prefix_survives_lookups():
    c = PromptCache(10, 0)
    put(c, [1, 2, 3], tag="a")
    for _ in range(3):
        n, s = c.lookup([1, 2, 3, 4, 5])
        assert n == 3 and s.tag == "a"
    assert len(c) == 1


def test_extending_insert_keeps_count_one():
    c = PromptCache(10, 0)
    put(c, [1, 2, 3])
    put(c, [1, 2, 3, 4, 5])
    assert len(c) == 1
    n, s = c.lookup([1, 2, 3, 4, 5, 6])
    assert n == 5 and s.length == 5


def test_partial_prefix_lookup_returns_trimmed_state():
    c = PromptCache(10, 0)
    put(c, list(range(40)))
    n, s = c.lookup(list(range(26)) + [999, 1000])
    assert n == 26 and s.length == 26


def test_whole_prompt_is_never_returned():
    c = PromptCache(10, 0)
    put(c, [1, 2, 3])
    n, s = c.lookup([1, 2, 3])
    assert n == 2 and s.length == 2  # at least one token left to evaluate
    assert c.lookup([1]) == (0, None)


def test_diverged_insert_makes_second_entry():
    c = PromptCache(10, 0)
    put(c, [1, 2, 3, 4], tag="a")
    put(c, [1, 2, 7, 8], tag="b")
    assert len(c) == 2
    assert c.lookup([1, 2, 7, 8, 9])[1].tag == "b"
    assert c.lookup([1, 2, 3, 4, 9])[1].tag == "a"
    n, _s = c.lookup([1, 2, 5, 6])
    assert n == 2


def test_count_lru():
    c = PromptCache(2, 0)
    put(c, [1, 1], tag="a")
    put(c, [2, 2], tag="b")
    c.lookup([1, 1, 5])  # a lookup does not refresh
    put(c, [3, 3], tag="c")
    assert len(c) == 2 and c.lookup([1, 1, 5]) == (0, None)
    put(c, [2, 2], tag="b2")  # re-insertion refreshes
    put(c, [4, 4], tag="d")
    assert c.lookup([2, 2, 9])[1].tag == "b2" and c.lookup([3, 3, 9]) == (0, None)


def test_type_aware_eviction():
    c = PromptCache(3, 0)
    put(c, [9, 9, 9], "system", "sys")
    put(c, [8, 8], "system", "sys2")
    put(c, [1, 1], "assistant", "a1")
    put(c, [2, 2], "assistant", "a2")  # evicts a1, not the older system entries
    assert c.lookup([1, 1, 0]) == (0, None)
    put(c, [3, 3], "assistant", "a3")
    put(c, [4, 4], "system", "sys3")  # no room: the assistant entries go first
    assert c.lookup([8, 8, 0])[1].tag == "sys2" and c.lookup([9, 9, 9, 0])[1].tag == "sys"
    assert len(c) == 3


def test_system_prefix_survives_a_longer_assistant_insert():
    c = PromptCache(10, 0)
    put(c, [1, 2], "system", "sys")
    put(c, [1, 2, 3, 4], "assistant", "full")
    assert len(c) == 2


def test_empty_token_list():
    c = PromptCache(10, 0)
    put(c, [])
    assert len(c) == 0 and c.lookup([]) == (0, None)


def test_byte_limit():
    c = PromptCache(10, 100)
    put(c, list(range(10)), per=5, tag="a")  # 50 bytes
    put(c, list(range(100, 110)), per=5, tag="b")  # 100 bytes
    assert len(c) == 2 and c.nbytes == 100
    put(c, list(range(200, 210)), per=5, tag="c")
    assert len(c) == 2 and c.nbytes == 100 and c.lookup(list(range(11)))[0] == 0
    put(c, list(range(300, 330)), per=5)  # 150 bytes alone: cannot stay
    assert c.nbytes <= 100
