"""Speculative decoding with fake main and draft models."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import Collector, RecordingBackend, make_engine, prompt, run, tokens_of

from backends.fake import FakeBackend
from refserver.engine.sampling import Sampler
from refserver.engine.speculative import verify
from refserver.engine.types import Finished, GenerationRequest, SamplingParams, SpeculativeParams

pytestmark = [pytest.mark.feature("speculative"), pytest.mark.needs_shared,
              pytest.mark.profile("refserver")]  # engine level: no server

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


def generate(draft, req, n_slots=1, **cfg):
    eng = make_engine(RecordingBackend(512, 2048, scale=4.0), draft=draft, n_slots=n_slots, **cfg)
    ev = run(eng, req)
    eng.shutdown()
    return ev


@pytest.mark.parametrize("draft_kind", ["same", "different"])
def test_greedy_output_matches_no_draft(draft_kind):
    req = GenerationRequest(prompt(), GREEDY, n_predict=40)
    base = generate(None, req)
    draft = FakeBackend(512, 2048, scale=4.0, seed=0 if draft_kind == "same" else 1)
    ev = generate(draft, req, speculative=SpeculativeParams(p_min=0.0 if draft_kind == "different" else 0.5))
    assert tokens_of(ev) == tokens_of(base)
    t = ev[-1].timings
    assert t["draft_n"] > 0
    if draft_kind == "same":
        assert t["draft_n_accepted"] > 0 and t["draft_n_accepted"] == t["draft_n"]
    else:
        assert t["draft_n_accepted"] < t["draft_n"]


def test_speculation_saves_main_model_calls_and_works_with_several_slots():
    main = RecordingBackend(512, 2048, scale=4.0)
    eng = make_engine(main, draft=FakeBackend(512, 2048, scale=4.0), n_slots=3, start=False,
                      speculative=SpeculativeParams(p_min=0.0))
    cols = [Collector() for _ in range(3)]
    reqs = [GenerationRequest(prompt(f"Tim had {i} dogs"), GREEDY, n_predict=30) for i in range(3)]
    for r, c in zip(reqs, cols):
        eng.submit(r, c)
    eng.start()
    outs = [c.wait() for c in cols]
    eng.shutdown()
    assert all(isinstance(o[-1], Finished) and o[-1].tokens_predicted == 30 for o in outs)
    assert len(main.calls) < 15  # far fewer than 30 steps
    assert any(all(c[3] for c in call) and len(call) == 3 for call in main.calls)  # batched verify
    for r, o in zip(reqs, outs):
        assert tokens_of(o) == tokens_of(generate(None, r))


def test_sampled_seeded_run_is_reproducible_and_n_max_zero_disables():
    sp = SamplingParams(seed=99, temperature=1.0, ignore_eos=True)
    req = GenerationRequest(prompt(), sp, n_predict=30)
    a = generate(FakeBackend(512, 2048, scale=4.0, seed=2), req, speculative=SpeculativeParams(p_min=0.0))
    b = generate(FakeBackend(512, 2048, scale=4.0, seed=2), req, speculative=SpeculativeParams(p_min=0.0))
    assert tokens_of(a) == tokens_of(b) and a[-1].timings["draft_n"] > 0
    off = GenerationRequest(prompt(), sp, n_predict=30, speculative=SpeculativeParams(n_max=0))
    c = generate(FakeBackend(512, 2048, scale=4.0, seed=2), off)
    assert c[-1].timings["draft_n"] == 0 and tokens_of(c) == tokens_of(generate(None, off))


def test_rejection_rule_preserves_the_target_distribution():
    """One draft token d with q one-hot: the emitted first token must follow p exactly."""
    V = 6
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.1, 0.15, 0.05], [1, 1, 1, 1, 1, 1]], dtype=np.float64))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    s = Sampler(params, V, [], seed=5)
    counts = np.zeros(V)
    n = 6000
    for _ in range(n):
        counts[verify(s, logits.astype(np.float32), [2])[0].token] += 1
    assert np.abs(counts / n - np.exp(logits[0])).max() < 0.025


def test_prompt_cache_carries_draft_state_across_slots():
    eng = make_engine(RecordingBackend(512, 2048, scale=4.0), draft=FakeBackend(512, 2048, scale=4.0),
                      n_slots=2, speculative=SpeculativeParams(p_min=0.0))
    a = run(eng, GenerationRequest(prompt(), GREEDY, n_predict=20, id_slot=0))
    b = run(eng, GenerationRequest(prompt(), GREEDY, n_predict=20, id_slot=1))
    eng.shutdown()
    assert b[-1].timings["cache_n"] == len(prompt()) - 1 and tokens_of(a) == tokens_of(b)
    assert b[-1].timings["draft_n_accepted"] > 0
    assert eng.drafter.tokens[1][:len(prompt())] == prompt()


def test_banned_tokens_are_never_proposed():
    """With ignore_eos or a -inf bias the main sampler cannot pick a token, so the draft
    must not propose it (it would always be rejected)."""
    from refserver.engine.engine import banned_tokens
    from refserver.engine.types import SamplingParams

    sampling = SamplingParams(logit_bias=((5, float("-inf")), (6, -3.0)), ignore_eos=True)
    assert banned_tokens(sampling, frozenset({1, 2})) == (1, 2, 5)
    assert banned_tokens(SamplingParams(), frozenset({1, 2})) == ()


def test_mirostat_requests_are_not_speculated():
    """Mirostat's state moves with every draw, so a verify step cannot replay it: no drafts."""
    sp = SamplingParams(seed=4, temperature=1.0, mirostat=2, ignore_eos=True)
    ev = generate(FakeBackend(512, 2048, scale=4.0), GenerationRequest(prompt(), sp, n_predict=20),
                  speculative=SpeculativeParams(p_min=0.0))
    assert isinstance(ev[-1], Finished) and ev[-1].tokens_predicted == 20
    assert ev[-1].timings.get("draft_n", 0) == 0
    assert tokens_of(ev) == tokens_of(generate(None, GenerationRequest(prompt(), sp, n_predict=20)))
