"""top_k over HTTP: the candidates the chain keeps are the k most likely tokens of the
full distribution (the sampler finds them by partition, not by sorting the vocabulary)."""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.feature("sampling"), pytest.mark.profile("llamacpp")]  # /completion, n_probs, post_sampling_probs

STORY = "Once upon a time, there was a little cat named Tom."


@pytest.mark.parametrize("top_k", [3, 8, 40])
def test_top_k_candidates_are_the_distributions_top_k(chat_server, top_k):
    """Same seed twice: once reporting the full distribution's top k (`top_logprobs`), once
    the chain's candidates (`post_sampling_probs`, temperature 1, no other truncation).
    Position by position the same token is drawn, the candidates are exactly those k ids,
    and their probabilities are the full distribution's renormalised over them."""
    body = {"prompt": STORY, "n_probs": top_k, "temperature": 1.0, "top_k": top_k, "top_p": 1.0,
            "min_p": 0.0, "seed": 5, "n_predict": 12}
    full = chat_server.ok("/completion", body)["completion_probabilities"]
    post = chat_server.ok("/completion", {**body, "post_sampling_probs": True})["completion_probabilities"]
    assert len(full) == len(post) > 0
    for a, b in zip(full, post):
        assert a["id"] == b["id"]
        top = {t["id"]: math.exp(t["logprob"]) for t in a["top_logprobs"]}
        cands = {t["id"]: t["prob"] for t in b["top_probs"]}
        assert set(cands) == set(top)
        total = sum(top.values())
        for tok, p in cands.items():
            assert p == pytest.approx(top[tok] / total, rel=1e-4, abs=1e-6)
