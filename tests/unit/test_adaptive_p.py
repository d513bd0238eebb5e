"""Adaptive-p (llama.cpp's `adaptive_target` / `adaptive_decay`): the final draw favours
tokens whose probability is near a target that moves against the running average of the
chosen tokens' probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refserver.engine.sampling import Sampler
from refserver.engine.types import SamplingParams

sampling = pytest.mark.feature("sampling")
pytestmark = pytest.mark.profile("refserver")

FLAT = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.0}


def _logits(probs: list[float]) -> np.ndarray:
    return np.log(np.array(probs, dtype=np.float64)).astype(np.float32)


@sampling
def test_transform_peaks_at_the_target():
    s = Sampler(SamplingParams(adaptive_target=0.3, **FLAT), 4, (), seed=1)
    ids, probs = s.distribution(_logits([0.55, 0.3, 0.1, 0.05]))
    chosen = dict(zip(ids.tolist(), probs.tolist()))
    assert max(chosen, key=chosen.get) == 1  # the token whose probability is the target
    assert chosen[1] > 0.5 and math.isclose(sum(chosen.values()), 1.0)
    plain = Sampler(SamplingParams(**FLAT), 4, (), seed=1)
    ids, probs = plain.distribution(_logits([0.55, 0.3, 0.1, 0.05]))
    assert dict(zip(ids.tolist(), probs.tolist()))[0] == pytest.approx(0.55, abs=1e-6)  # off: unchanged


@sampling
def test_running_average_moves_the_target():
    """After draws of probability 0.55 (above the 0.3 target), the adapted target drops to
    2 * 0.3 - average, so the 0.1 token gains on the 0.3 one."""
    s = Sampler(SamplingParams(adaptive_target=0.3, adaptive_decay=0.5, **FLAT), 4, (), seed=3)
    row = _logits([0.55, 0.3, 0.1, 0.05])

    def by_token() -> dict[int, float]:
        ids, probs = s.distribution(row)
        return dict(zip(ids.tolist(), probs.tolist()))
    before = by_token()
    for _ in range(6):  # as if six draws had each chosen a 0.55 token
        s.weighted_sum = 0.55 + s.decay * s.weighted_sum
        s.total_weight = 1.0 + s.decay * s.total_weight
    after = by_token()
    assert after[2] / after[1] > before[2] / before[1]


@sampling
def test_seeded_draws_are_reproducible_and_stateful():
    params = SamplingParams(adaptive_target=0.2, seed=5, **FLAT)
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=64).astype(np.float32) * 3 for _ in range(30)]
    a = [Sampler(params, 64, (), seed=5) for _ in range(2)]
    assert a[0].stateful  # speculative decoding cannot replay it
    picks = [[s.sample(r).token for r in rows] for s in a]
    assert picks[0] == picks[1]


@pytest.mark.profile("refserver")  # llama.cpp documents --adaptive-target as a flag, not as a request field
@sampling
def test_low_target_picks_less_likely_tokens(chat_server):
    """Over HTTP: with a low target the chosen tokens' own probabilities are lower on
    average than with the sampler off (same seed, same prompt)."""
    def mean_prob(extra: dict) -> float:
        body = chat_server.ok("/completion", {"prompt": "Once upon a time", "n_predict": 48, "seed": 11,
                                              "n_probs": 1, "ignore_eos": True, **FLAT, **extra})
        probs = [math.exp(p["logprob"]) for p in body["completion_probabilities"]]
        assert body["generation_settings"]["adaptive_target"] == extra.get("adaptive_target", -1.0)
        return sum(probs) / len(probs)
    assert mean_prob({"adaptive_target": 0.05, "adaptive_decay": 0.9}) < mean_prob({}) - 0.1
