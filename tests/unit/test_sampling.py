"""Sampler: llama.cpp chain semantics on small hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from refserver.engine.sampling import Sampler
from refserver.engine.types import SamplingParams

pytestmark = pytest.mark.feature("sampling")

V = 8
LOGITS = np.array([1.0, 3.0, 2.0, -1.0, 0.5, 2.9, -2.0, 0.0], dtype=np.float32)
OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def S(**kw) -> Sampler:
    return Sampler(SamplingParams(**kw), V, eog_ids=[7], seed=kw.get("seed", 1))


def test_greedy_is_argmax_after_bias_and_penalties():
    assert S(temperature=0.0).sample(LOGITS).token == 1
    assert S(temperature=0.0, logit_bias=((1, float("-inf")),)).sample(LOGITS).token == 5
    assert S(temperature=-1.0, logit_bias=((6, 10.0),)).sample(LOGITS).token == 6
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=2.0), V, [7], 1, history=[1])
    assert s.sample(LOGITS).token == 5  # 3.0 / 2 = 1.5 < 2.9


def test_repeat_penalty_divides_positive_multiplies_negative():
    s = Sampler(SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25), V, [7], 1,
                history=[1, 3, 3])
    x = s.adjusted(LOGITS)
    assert x[1] == pytest.approx(3.0 / 2 - 0.5 - 0.25)
    assert x[3] == pytest.approx(-1.0 * 2 - 2 * 0.5 - 0.25)
    assert x[2] == pytest.approx(2.0)
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=1), V, [7], 1, history=[1, 3])
    assert s.adjusted(LOGITS)[1] == pytest.approx(3.0)


def test_ignore_eos_bans_eog():
    s = S(temperature=1.0, ignore_eos=True, **OFF)
    ids, _p = s.distribution(LOGITS + np.eye(V, dtype=np.float32)[7] * 50)
    assert 7 not in ids


@pytest.mark.parametrize("params,expected", [
    ({"top_k": 2, "top_p": 1.0, "min_p": 0.0}, {1, 5}),
    ({"top_k": 0, "top_p": 1.0, "min_p": 0.5}, {1, 5}),  # p >= 0.5 p_max <=> logit >= 3 - ln 2
    ({"top_k": 0, "top_p": 1.0, "min_p": 0.3}, {1, 5, 2}),
    ({"top_k": 0, "top_p": 0.5, "min_p": 0.0}, {1, 5}),
    ({"top_k": 1, "top_p": 1.0, "min_p": 0.0, "min_keep": 3}, {1, 5, 2}),
    ({"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 0.3}, {5}),  # closest to the entropy first
    ({"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 0.5}, {5, 1}),
])
def test_truncation_samplers(params, expected):
    ids, p = S(temperature=1.0, **params).distribution(LOGITS)
    assert set(ids.tolist()) == expected and p.sum() == pytest.approx(1.0)


def test_xtc_removes_top_choices():
    ids, _ = S(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.1, **OFF).distribution(LOGITS)
    assert 1 not in ids and 5 not in ids and 2 in ids  # the least likely above threshold stays


def test_temperature_and_dynatemp():
    _, p1 = S(temperature=1.0, **OFF).distribution(LOGITS)
    _, p2 = S(temperature=0.5, **OFF).distribution(LOGITS)
    assert p2.max() > p1.max()
    _, p3 = S(temperature=1.0, dynatemp_range=0.5, **OFF).distribution(LOGITS)
    assert p3.sum() == pytest.approx(1.0) and not np.allclose(p3, p1)


def test_seeded_draws_reproduce_and_follow_the_distribution():
    a = [S(seed=11, temperature=1.0, **OFF).sample(LOGITS).token for _ in range(1)]
    s1, s2 = S(seed=11, temperature=1.0, **OFF), S(seed=11, temperature=1.0, **OFF)
    assert [s1.sample(LOGITS).token for _ in range(50)] == [s2.sample(LOGITS).token for _ in range(50)]
    s = S(seed=3, temperature=1.0, **OFF)
    counts = np.bincount([s.sample(LOGITS).token for _ in range(4000)], minlength=V) / 4000
    _, p = S(temperature=1.0, **OFF).distribution(LOGITS)
    ids, _ = S(temperature=1.0, **OFF).distribution(LOGITS)
    dense = np.zeros(V)
    dense[ids] = p
    assert np.abs(counts - dense).max() < 0.03 and a
