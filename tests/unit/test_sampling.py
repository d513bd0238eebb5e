"""Sampler: llama.cpp chain semantics on small hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from refserver.engine.dry import VocabularyIndex, breaker_table, dry_penalties, repetition_limit, z_array
from refserver.engine.sampling import Sampler
from refserver.engine.types import SamplingParams

pytestmark = [pytest.mark.feature("sampling"), pytest.mark.profile("refserver")]

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


@pytest.mark.parametrize("params", [
    {}, {"ignore_eos": True}, {"logit_bias": ((1, float("-inf")), (5, float("-inf")))},
    {"logit_bias": ((3, 0.5),)}, {"repeat_penalty": 1.5}, {"dry_multiplier": 0.8, "dry_allowed_length": 1},
])
def test_greedy_fast_path_picks_what_the_full_distribution_picks(params):
    """`sample` skips the float64 chain for plain greedy requests; on random rows with
    exact ties it must still pick the distribution's argmax (the lowest tied id)."""
    rng = np.random.default_rng(3)
    history = [1, 2, 1, 2, 1]
    for _ in range(200):
        row = rng.integers(-3, 4, V).astype(np.float32)  # small integers: frequent ties
        s = Sampler(SamplingParams(temperature=0.0, **params), V, [7], 1, history=history)
        ids, _ = s.distribution(row)
        picked = s.sample(row)
        assert picked.token == int(ids[0])
        assert list(picked.cand_ids) == [picked.token] and list(picked.cand_probs) == [1.0]


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


# ------------------------------------------------------------------ DRY, top_n_sigma, Mirostat
def brute_dry(history, multiplier, base, allowed, breakers):
    """DRY by its definition: for each earlier position, how many tokens before it match the
    end of the history (not reaching back past the last breaker); the token that followed
    there would extend that repetition."""
    n = len(history)
    limit = next((i for i in range(n) if history[n - 1 - i] in breakers), n)
    longest = {}
    for p in range(n - 1):
        length = 0
        while length <= p and length < limit and history[p - length] == history[n - 1 - length]:
            length += 1
        if length >= allowed:
            t = history[p + 1]
            longest[t] = max(longest.get(t, 0), length)
    return {t: multiplier * base ** (length - allowed) for t, length in longest.items() if t not in breakers}


def test_z_array_matches_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = list(rng.integers(0, 3, size=int(rng.integers(0, 30))))
        z = z_array(s)
        for k in range(1, len(s)):
            n = 0
            while k + n < len(s) and s[n] == s[k + n]:
                n += 1
            assert z[k] == n


def test_dry_penalties_match_definition():
    rng = np.random.default_rng(1)
    for _ in range(300):
        hist = [int(t) for t in rng.integers(0, 4, size=int(rng.integers(0, 40)))]
        breakers = frozenset({3}) if rng.random() < 0.5 else frozenset()
        allowed = int(rng.integers(0, 4))
        got = dry_penalties(hist, 0.8, 1.75, allowed, -1, single(breakers))
        want = brute_dry(hist, 0.8, 1.75, allowed, breakers) if len(hist) > allowed else {}
        assert got.keys() == want.keys()
        for t in got:
            assert got[t] == pytest.approx(want[t])


def test_dry_example_and_breakers():
    # llama.cpp's worked example: a b c c b c y a b c -> c extends "a b c" (3), b extends "c" (1), y "b c" (2)
    a, b, c, y = 1, 2, 3, 4
    hist = [a, b, c, c, b, c, y, a, b, c]
    pen = dry_penalties(hist, 1.0, 2.0, 2, -1, {})
    assert pen == {c: 2.0 ** (3 - 2), y: 2.0 ** (2 - 2)}
    assert dry_penalties(hist, 1.0, 2.0, 2, -1, single({c})) == {}  # the last token is a breaker
    assert dry_penalties(hist, 1.0, 2.0, 2, 3, {}) == {}  # window of 3: nothing repeats
    assert dry_penalties(hist, 0.0, 2.0, 2, -1, {}) == {}  # multiplier 0: off


# a toy vocabulary: ids 0..10 (every single letter, so any string over them tokenizes)
PIECES = (b"a", b"b", b"#", b"##", b"x#", b"c#d", b"#y", b"x", b"c", b"d", b"y")


def toy_encode(text: str) -> list[int]:
    """Greedy longest-piece tokenizer over PIECES (what a tail is tokenized with)."""
    data, out = text.encode(), []
    while data:
        best = max((i for i, p in enumerate(PIECES) if data.startswith(p)), key=lambda i: len(PIECES[i]))
        out.append(best)
        data = data[len(PIECES[best]):]
    return out


def test_breaker_table_finds_whole_and_split_breakers():
    """As llama.cpp builds it: a token containing the breaker is a breaker alone (empty
    tail); a token ending with the breaker's start is a head whose tail is the rest,
    tokenized."""
    table = breaker_table(["##"], VocabularyIndex(PIECES), toy_encode)
    assert table[3] == ((),)  # "##" itself
    assert table[2] == ((2,),)  # "#" then "#"
    assert table[4] == ((2,),)  # "x#" then "#"
    assert 5 not in table and 6 not in table  # "c#d", "#y": their "#" is not at their end
    assert 0 not in table and 1 not in table


def brute_breaker_table(breakers, pieces, encode):
    """llama.cpp's definition, scanned piece by piece: a piece containing the breaker is one
    by itself; a piece whose tail from some position is a proper prefix of the breaker is a
    head, followed by the tokenized rest."""
    table = {}
    for text in breakers:
        needle = text.encode()
        for token, piece in enumerate(pieces):
            if needle in piece:
                table.setdefault(token, set()).add(())
                continue
            for pos in range(len(piece)):
                if needle.startswith(piece[pos:]):
                    table.setdefault(token, set()).add(tuple(encode(needle[len(piece) - pos:].decode())))
    return table


def test_breaker_table_matches_a_piece_by_piece_scan():
    rng = np.random.default_rng(4)
    vocab = VocabularyIndex(PIECES)
    for _ in range(200):
        breakers = ["".join(rng.choice(list("ab#xcdy"), size=int(rng.integers(1, 6)))) for _ in range(2)]
        got = {t: set(tails) for t, tails in breaker_table(breakers, vocab, toy_encode).items()}
        assert got == brute_breaker_table(breakers, PIECES, toy_encode), breakers


def test_split_breaker_limits_repetitions_only_when_its_tail_follows():
    a, b, hash_, xhash = 0, 1, 2, 4
    table = breaker_table(["##"], VocabularyIndex(PIECES), toy_encode)
    # "a b x# # a b": the breaker "x#" + "#" ends two tokens before the end
    assert repetition_limit([a, b, xhash, hash_, a, b], table) == 2
    # "a b # a b": a lone "#" is no breaker, so a repetition may reach back over it
    assert repetition_limit([a, b, hash_, a, b], table) == 5
    # the head is the last token and its tail has not come yet: not a breaker (yet)
    assert repetition_limit([a, b, a, xhash], table) == 4
    # "a b a b x# # a b": "a b" repeats, but cannot reach back across the breaker
    hist = [a, b, a, b, xhash, hash_, a, b]
    assert dry_penalties(hist, 1.0, 2.0, 2, -1, {}) != {}
    assert dry_penalties(hist, 1.0, 2.0, 3, -1, table) == {}  # limit 2 < allowed 3
    # a head with a tail is still penalised when it would extend a repetition (llama.cpp
    # spares only single-token breakers)
    hist = [xhash, a, b, xhash, a, b]
    assert dry_penalties(hist, 1.0, 2.0, 2, -1, table) == {xhash: 2.0 ** (3 - 2)}


def single(tokens) -> dict:
    """A breaker table of single-token breakers."""
    return {t: ((),) for t in tokens}


def test_dry_steers_greedy_away_from_a_repeat():
    logits = np.zeros(V, dtype=np.float32)
    logits[3] = 1.0  # argmax would continue "2 3 ... 2" with 3
    hist = [2, 3, 5, 2]
    greedy = SamplingParams(temperature=0.0)
    assert Sampler(greedy, V, [7], 1, history=hist).sample(logits).token == 3
    dry = SamplingParams(temperature=0.0, dry_multiplier=2.0, dry_allowed_length=1)
    assert Sampler(dry, V, [7], 1, history=hist).sample(logits).token != 3
    # a breaker token is never penalised
    assert Sampler(dry, V, [7], 1, history=hist, dry_breakers=single({3})).sample(logits).token == 3


def test_top_n_sigma_keeps_logits_within_n_std_of_the_max():
    s = S(temperature=1.0, top_n_sigma=1.0, **OFF)
    ids, _ = s.distribution(LOGITS)
    cut = LOGITS.max() - 1.0 * LOGITS.astype(np.float64).std()
    assert set(ids.tolist()) == {i for i, v in enumerate(LOGITS) if v >= cut} == {1, 2, 5}
    assert set(S(temperature=1.0, top_n_sigma=-1.0, **OFF).distribution(LOGITS)[0].tolist()) == set(range(V))


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_truncates_and_tracks_target_surprise(version):
    s = S(temperature=1.0, mirostat=version, mirostat_tau=1.0, mirostat_eta=0.5, seed=3)
    assert s.stateful and s.mu == 2.0
    ids, probs = s.distribution(LOGITS)
    assert 1 <= len(ids) < V and probs.sum() == pytest.approx(1.0)
    if version == 2:  # every kept token has surprise <= mu
        full = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
        assert all(-np.log2(full[i]) <= 2.0 for i in ids)
    mu0 = s.mu
    out = s.sample(LOGITS)
    p = float(out.cand_probs[list(out.cand_ids).index(out.token)])
    assert s.mu == pytest.approx(mu0 - 0.5 * (-np.log2(p) - 1.0))
    a = [S(temperature=1.0, mirostat=version, seed=9).sample(LOGITS).token for _ in range(2)]
    assert a[0] == a[1]  # seeded: reproducible
    assert not S(temperature=0.0, mirostat=version).stateful  # greedy stays greedy


@pytest.mark.parametrize("params", [
    {"top_k": 40}, {"top_k": 5, "top_p": 0.9, "min_p": 0.05}, {"top_k": 3, "min_keep": 6},
    {"top_k": 10, "typical_p": 0.8, "temperature": 0.7}, {"top_k": 8, "xtc_probability": 0.5, "xtc_threshold": 0.1},
    {"top_k": 4, "logit_bias": ((2, float("-inf")), (9, 3.0))}, {"top_k": 6, "repeat_penalty": 1.3},
    {"top_k": 7, "dry_multiplier": 0.8, "dry_allowed_length": 1}, {"top_k": 5, "top_n_sigma": 1.0},
    {"top_k": 12, "samplers": ("min_p", "top_k", "temperature")},
])
@pytest.mark.parametrize("vocab", [64, 5000])
def test_top_k_first_chain_equals_the_full_sort(params, vocab):
    """With top_k the first stage that acts, `chain` takes the k best by partition (of a
    sample first, on a wide row) instead of sorting the whole row; on rows with exact ties,
    bans, NaN and +-inf its candidates, probabilities and seeded draws must be the full
    sort's, bit for bit."""
    rng = np.random.default_rng(11)
    for trial in range(300 if vocab < 1000 else 60):
        row = rng.integers(-4, 5, vocab).astype(np.float32) * 0.5  # many exact ties
        if trial % 3 == 0:  # a long tail below a few leaders: the sample's threshold matters
            row = (rng.standard_normal(vocab) * 2).round(1).astype(np.float32)
        if trial % 7 == 0:
            row[rng.integers(0, vocab, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
        if trial % 5 == 0:
            row[rng.integers(0, vocab, 40)] = np.nan
        if trial % 11 == 0:
            row[:] = -np.inf
            row[rng.integers(0, vocab, 2)] = 1.0
        fast = Sampler(SamplingParams(**params), vocab, eog_ids=[7], seed=trial, history=[1, 2, 1, 2, 1])
        slow = Sampler(SamplingParams(**params), vocab, eog_ids=[7], seed=trial, history=[1, 2, 1, 2, 1])
        slow._top_k_at = None
        for _ in range(3):
            a, b = fast.sample(row), slow.sample(row)
            assert a.token == b.token
            np.testing.assert_array_equal(a.cand_ids, b.cand_ids)
            np.testing.assert_array_equal(a.cand_probs, b.cand_probs)
            fast.accept(a.token)
            slow.accept(b.token)
