"""Token sampling with llama.cpp's sampler chain, in numpy.

One `Sampler` is composed per request.  Order (llama.cpp `common_sampler`): logit_bias
(ignore_eos bans every end-of-generation id), penalties (always first; a "penalties"
entry in the `samplers` list is accepted and not applied twice), then the list (dry,
top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature with dynatemp), then a draw from
the request's own seeded Generator, so a seeded request is reproducible whatever else the
server runs.  `mirostat` 1 or 2 replaces the list by temperature and Mirostat's own
truncation, which adapts (state `mu`) to keep each token's surprise near `tau`.
Adaptive-p (`adaptive_target` >= 0, llama.cpp's PR 17927) replaces the final draw: each
candidate's new logit peaks where its probability is near a target that moves against a
running average of the chosen tokens' probabilities, so on average they sit near it.
Temperature <= 0 is greedy: argmax after bias, penalties, DRY and any grammar mask.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from refserver.engine.dry import BreakerTable, dry_penalties
from refserver.engine.types import SamplingParams

NEG_INF = float("-inf")
_CERTAIN = np.ones(1)  # the candidate probabilities of a greedy pick (shared: read-only)
_CERTAIN.flags.writeable = False
LOWEST = float(np.finfo(np.float32).min)  # reported instead of -inf


@dataclass
class Sampled:
    token: int
    # candidates after the chain and their probabilities (for post_sampling_probs)
    cand_ids: np.ndarray
    cand_probs: np.ndarray


FLOAT_MAX = float(np.finfo(np.float32).max)


def softmax(x: np.ndarray) -> np.ndarray:
    """Probabilities of logits that may hold +-inf: +inf entries share all the mass."""
    m = np.max(x)
    if m == np.inf:
        e = (x == np.inf).astype(np.float64)
    elif not np.isfinite(m):
        return np.full_like(x, 1.0 / len(x), dtype=np.float64)
    else:
        e = np.exp(x - m)
    return e / e.sum()


def saturating(value: float, fallback: float) -> float:
    """`value` clamped to float32's range (C float semantics); NaN becomes `fallback`."""
    if math.isnan(value):
        return fallback
    return min(max(value, -FLOAT_MAX), FLOAT_MAX)


def _pow(base: float, exponent: float) -> float:
    """base ** exponent, +-inf on overflow and inf for 0 to a negative power (C's powf)."""
    with np.errstate(all="ignore"):
        return float(np.power(np.float64(base), np.float64(exponent)))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x)
    return x - m - math.log(np.exp(x - m).sum())


def _bias_row(params: SamplingParams, vocab_size: int, eog_ids: Sequence[int]) -> np.ndarray:
    """logit_bias over the vocabulary (-inf bans stay -inf), EOG tokens banned with ignore_eos."""
    bias = np.zeros(vocab_size, dtype=np.float64)
    for tok, b in params.logit_bias:
        if 0 <= tok < vocab_size:
            bias[tok] = NEG_INF if b == NEG_INF else bias[tok] + b
    if params.ignore_eos:
        for t in eog_ids:
            if 0 <= t < vocab_size:
                bias[t] = NEG_INF
    return bias


def _chain_names(params: SamplingParams) -> tuple[str, ...]:
    """The samplers list, with top_n_sigma at llama.cpp's default place when set but not listed."""
    names = list(params.samplers)
    if params.top_n_sigma > 0 and "top_n_sigma" not in names:
        names.insert(names.index("dry") + 1 if "dry" in names else 0, "top_n_sigma")
    return tuple(names)


class Sampler:
    """A request's sampler: its parameters, token history (for penalties) and RNG."""

    def __init__(self, params: SamplingParams, vocab_size: int, eog_ids: Sequence[int], seed: int,
                 history: Sequence[int] = (), dry_breakers: BreakerTable | None = None):
        self.params = params
        self.vocab_size = vocab_size
        self.seed = seed
        self.rng = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
        self.history: list[int] = list(history)
        bias = _bias_row(params, vocab_size, eog_ids)
        self.bias = bias if (params.logit_bias or params.ignore_eos) else None
        self.greedy = params.temperature <= 0
        self.dry_breakers = dry_breakers or {}  # where DRY's sequence breakers occur (dry.py)
        self.chain_names = _chain_names(params)
        self.mirostat = params.mirostat if params.mirostat in (1, 2) else 0
        self.mu = saturating(2.0 * params.mirostat_tau, 0.0)  # Mirostat's running surprise bound
        self.adaptive = params.adaptive_target >= 0 and not self.greedy and not self.mirostat
        decay = min(max(params.adaptive_decay, 0.0), 0.99) if math.isfinite(params.adaptive_decay) else 0.9
        self.decay = decay
        # the running average starts as if the target had been met (no warm-up swing)
        self.weighted_sum = min(params.adaptive_target, 1.0) / (1.0 - decay)
        self.total_weight = 1.0 / (1.0 - decay)
        self._original: np.ndarray | None = None  # the last draw's probabilities before the transform
        # Greedy with nothing that moves a logit but bans (ignore_eos, -inf biases): the
        # argmax of the float32 row with the bans applied is the same token, without the
        # float64 copy of the vocabulary (this runs once per generated token).
        only_bans = bool(np.all((bias == 0) | (bias == NEG_INF)))
        self._banned = np.flatnonzero(bias == NEG_INF)
        self._banned_set = frozenset(self._banned.tolist())
        self._plain_greedy = (self.greedy and only_bans and not self._penalties_active()
                              and not ("dry" in self.chain_names and params.dry_multiplier > 0))
        self._top_k_at = self._leading_top_k()

    @property
    def stateful(self) -> bool:
        """Whether a draw changes how later tokens are sampled (beyond the history):
        speculative verification cannot replay such a sampler."""
        return (self.mirostat != 0 or self.adaptive) and not self.greedy

    def _leading_top_k(self) -> int | None:
        """Where top_k sits in the chain when every stage before it leaves the candidates
        as they are (DRY and top-n-sigma off): then only the top k of the vocabulary ever
        reach a stage, and `chain` need not sort the whole row (None: it must)."""
        p = self.params
        inert = {"dry": p.dry_multiplier == 0.0 or p.dry_base < 1.0 or p.dry_penalty_last_n == 0,
                 "top_n_sigma": p.top_n_sigma <= 0}
        for i, name in enumerate(self.chain_names):
            if name == "top_k":
                return i if p.top_k > 0 else None
            if name in self._STAGES and not inert.get(name, False):
                return None
        return None

    def accept(self, token: int) -> None:
        self.history.append(token)

    # ------------------------------------------------------------------ chain
    def _penalties_active(self) -> bool:
        p = self.params
        return p.repeat_last_n != 0 and (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0
                                         or p.presence_penalty != 0.0)

    def _penalties(self, logits: np.ndarray, history: Sequence[int]) -> None:
        p = self.params
        if not self._penalties_active():
            return
        window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
        for tok, count in Counter(window).items():
            if not 0 <= tok < len(logits):
                continue
            v = logits[tok]
            v = v * p.repeat_penalty if v <= 0 else v / p.repeat_penalty
            logits[tok] = v - count * p.frequency_penalty - p.presence_penalty

    def adjusted(self, raw: np.ndarray, allowed: np.ndarray | None = None,
                 history: Sequence[int] | None = None) -> np.ndarray:
        """Raw logits after logit bias, penalties (unless listed later) and the grammar mask."""
        x = raw[: self.vocab_size].astype(np.float64)  # a copy
        if self.bias is not None:
            x += self.bias
        if self._penalties_active():
            with np.errstate(all="ignore"):  # a zero repeat_penalty divides by zero, as in C
                self._penalties(x, self.history if history is None else history)
            x[np.isnan(x)] = NEG_INF
        if allowed is not None:
            x[~allowed[: len(x)]] = NEG_INF
        return x

    def _dry_penalties(self, history: Sequence[int] | None) -> dict[int, float]:
        p = self.params
        return dry_penalties(self.history if history is None else history, p.dry_multiplier, p.dry_base,
                             p.dry_allowed_length, p.dry_penalty_last_n, self.dry_breakers)

    @staticmethod
    def _sorted(ids: np.ndarray, lg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-lg, kind="stable")
        return ids[order], lg[order]

    @classmethod
    def _candidates(cls, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, logits) of the tokens not banned (above -inf), sorted descending."""
        ids = np.flatnonzero(x > NEG_INF)
        if len(ids) == 0:  # everything banned: fall back to the unbanned argmax source
            ids = np.array([int(np.argmax(x))])
        return cls._sorted(ids, x[ids])

    @classmethod
    def _top_candidates(cls, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The first k of `_candidates(x)` without sorting the whole row: the k-th largest
        value by partition, the ids above it and the lowest-id ties at it, then sorted as
        `_candidates` sorts.  None when fewer than k finite values lead (bans or NaN among
        them): the caller then takes the full path, which handles those."""
        if k >= len(x):
            return None
        kth = _kth_largest(x, k)
        if not kth > NEG_INF:
            return None
        above = np.flatnonzero(x > kth)
        ids = np.concatenate([above, np.flatnonzero(x == kth)[: k - len(above)]])
        if len(ids) != k:
            return None
        ids.sort()
        return cls._sorted(ids, x[ids])

    @staticmethod
    def _pruned(ids: np.ndarray, lg: np.ndarray, before: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
        """What a stage left, less the tokens it pushed to -inf (or NaN); when nothing is
        left, the best candidate the stage was given."""
        keep = lg > NEG_INF
        if keep.all():
            return ids, lg
        if keep.any():
            return ids[keep], lg[keep]
        return before[0][:1], before[1][:1]

    def chain(self, x: np.ndarray, history: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (ids, logits) after the samplers list, temperature included."""
        min_keep = max(self.params.min_keep, 1)
        names, picked = self.chain_names, None
        if self._top_k_at is not None:  # top_k is the first stage that acts: it alone, fast
            picked = self._top_candidates(x, max(self.params.top_k, min_keep))
        if picked is not None:
            (ids, lg), names = picked, names[self._top_k_at + 1:]
        else:
            ids, lg = self._candidates(x)  # sorted descending from here on
        for name in names:
            if len(ids) <= 1:
                break
            stage = self._STAGES.get(name)  # "penalties" (applied first) and unknown names: none
            if stage is not None:
                with np.errstate(all="ignore"):  # overflow saturates to +-inf, as in C
                    ids, lg = self._pruned(*stage(self, ids, lg, min_keep, history), (ids, lg))
        return ids, lg

    # Each stage takes and returns (ids, logits) sorted descending, and keeps >= min_keep.
    def _dry(self, ids, lg, min_keep, history):
        pen = self._dry_penalties(history)
        if not pen:
            return ids, lg
        return self._sorted(ids, lg - np.array([pen.get(int(i), 0.0) for i in ids]))

    def _top_n_sigma(self, ids, lg, min_keep, history):
        if self.params.top_n_sigma <= 0:
            return ids, lg
        keep = lg >= lg[0] - self.params.top_n_sigma * float(np.std(lg))
        keep[0] = True  # NaN spread (inf logits) keeps the best
        return ids[keep], lg[keep]

    def _top_k(self, ids, lg, min_keep, history):
        if self.params.top_k <= 0:
            return ids, lg
        k = max(self.params.top_k, min_keep)
        return ids[:k], lg[:k]

    def _typical(self, ids, lg, min_keep, history):
        if self.params.typical_p >= 1.0:
            return ids, lg
        probs = softmax(lg)
        ent = -float(np.sum(probs[probs > 0] * np.log(probs[probs > 0])))
        shifted = np.abs(-np.log(probs) - ent)
        idx = np.argsort(shifted, kind="stable")
        cum = np.cumsum(probs[idx])
        over = np.flatnonzero(cum[min_keep - 1:] > self.params.typical_p)
        last = len(idx) if len(over) == 0 else int(over[0]) + min_keep
        keep = np.sort(idx[:last])
        return ids[keep], lg[keep]

    def _top_p(self, ids, lg, min_keep, history):
        if self.params.top_p >= 1.0:
            return ids, lg
        cum = np.cumsum(softmax(lg))
        hit = np.flatnonzero(cum >= self.params.top_p)
        last = len(ids) if len(hit) == 0 else int(hit[0]) + 1
        last = max(last, min(min_keep, len(ids)))
        return ids[:last], lg[:last]

    def _min_p(self, ids, lg, min_keep, history):
        if self.params.min_p <= 0.0:
            return ids, lg
        keep = lg >= lg[0] + math.log(self.params.min_p)
        n = max(int(keep.sum()), min(min_keep, len(ids)))
        return ids[:n], lg[:n]

    def _xtc(self, ids, lg, min_keep, history):
        p = self.params
        if p.xtc_probability <= 0 or p.xtc_threshold > 0.5 or self.rng.random() > p.xtc_probability:
            return ids, lg
        probs = softmax(lg)
        above = np.flatnonzero(probs >= p.xtc_threshold)
        pos_last = int(above[-1]) if len(above) and above[0] == 0 else 0
        if pos_last > 0 and len(ids) - pos_last >= min_keep:
            return ids[pos_last:], lg[pos_last:]
        return ids, lg

    def _temperature_stage(self, ids, lg, min_keep, history):
        return ids, self._temperature(lg)

    _STAGES: ClassVar[dict[str, Callable]] = {"dry": _dry, "top_n_sigma": _top_n_sigma, "top_k": _top_k, "typ_p": _typical,
               "typical_p": _typical, "top_p": _top_p, "min_p": _min_p, "xtc": _xtc,
               "temperature": _temperature_stage}

    def _temperature(self, lg: np.ndarray) -> np.ndarray:
        p = self.params
        if p.dynatemp_range > 0:
            if len(lg) <= 1:
                return lg
            lo = max(0.0, p.temperature - p.dynatemp_range)
            hi = p.temperature + p.dynatemp_range
            probs = softmax(lg)
            nz = probs[probs > 0]
            ent = -float(np.sum(nz * np.log(nz)))
            norm = ent / math.log(len(lg))
            t = saturating(lo + (hi - lo) * _pow(norm, p.dynatemp_exponent), p.temperature)
            return lg / max(t, 1e-6)
        return lg / p.temperature

    # ------------------------------------------------------------------ public
    def distribution(self, raw: np.ndarray, allowed: np.ndarray | None = None,
                     history: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probs) the next token is drawn from; one id with prob 1 when greedy."""
        x = self.adjusted(raw, allowed, history)
        if self.greedy:
            if "dry" in self.chain_names:
                for tok, amount in self._dry_penalties(history).items():
                    if 0 <= tok < len(x):
                        x[tok] -= amount
            return np.array([int(np.argmax(x))]), np.array([1.0])
        if self.mirostat:
            return self._mirostat(x)
        ids, lg = self.chain(x, history)
        probs = softmax(lg)
        return (ids, self._adaptive_p(probs)) if self.adaptive else (ids, probs)

    def _adaptive_p(self, probs: np.ndarray) -> np.ndarray:
        """Adaptive-p's transform: logit 5 at the adapted target, falling as 10 d^2 / (1 + d)
        with d = |p - target| / 0.3 (quadratic near it, linear in the tails)."""
        target = min(self.params.adaptive_target, 1.0)
        adapted = min(max(2.0 * target - self.weighted_sum / self.total_weight, 0.0), 1.0)
        d = np.abs(probs - adapted) / 0.3
        self._original = probs
        return softmax(5.0 - 10.0 * d * d / (1.0 + d))

    def _mirostat(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Temperature, then Mirostat's truncation for the current `mu` (the draw and the
        update of `mu` happen in `sample`)."""
        ids, lg = self._candidates(x)
        with np.errstate(all="ignore"):  # a tiny temperature or a huge mu saturates, as in C
            probs = softmax(lg / self.params.temperature)
            if self.mirostat == 1:
                n = self._mirostat_k(probs)
            else:  # keep the tokens up to the first whose surprise exceeds mu
                over = np.flatnonzero(-np.log2(probs) > self.mu)
                n = max(int(over[0]) if len(over) else len(ids), 1)
        return ids[:n], probs[:n] / probs[:n].sum()

    def _mirostat_k(self, probs: np.ndarray) -> int:
        """Mirostat 1's cut: estimate the Zipf exponent s from the top m=100 tokens, then
        keep the k most likely tokens for which the expected surprise is mu."""
        m = min(100, len(probs))
        if m <= 1:
            return 1
        i = np.arange(m - 1, dtype=np.float64)
        t = np.log((i + 2) / (i + 1))
        b = np.log(probs[: m - 1] / probs[1:m])
        s_hat = np.sum(t * b) / np.sum(t * t)
        eps = s_hat - 1
        k = (eps * np.power(2.0, self.mu) / (1 - np.power(float(self.vocab_size), -eps))) ** (1 / s_hat)
        return max(int(min(k, len(probs))), 1) if np.isfinite(k) else len(probs)

    def draw(self, probs: np.ndarray) -> int:
        """Index drawn from `probs` with the request's RNG."""
        cum = np.cumsum(probs)
        r = self.rng.random() * cum[-1]
        return min(int(np.searchsorted(cum, r, side="right")), len(probs) - 1)

    def sample(self, raw: np.ndarray, allowed: np.ndarray | None = None) -> Sampled:
        if self._plain_greedy and allowed is None:
            x = raw[: self.vocab_size]
            token = int(x.argmax())
            if token in self._banned_set:  # rare: copy the row only then
                x = x.copy()
                x[self._banned] = NEG_INF
                token = int(x.argmax())
            return Sampled(token, np.array([token]), _CERTAIN)
        ids, probs = self.distribution(raw, allowed)
        i = 0 if len(ids) == 1 else self.draw(probs)
        if self.adaptive:  # the running average of the chosen tokens' own probabilities
            self.weighted_sum = float(self._original[i]) + self.decay * self.weighted_sum
            self.total_weight = 1.0 + self.decay * self.total_weight
        elif self.stateful:  # Mirostat: move mu toward the target surprise tau
            p = self.params
            surprise = -math.log2(max(float(probs[i]), 1e-300))
            self.mu = saturating(self.mu - p.mirostat_eta * (surprise - p.mirostat_tau), self.mu)
        return Sampled(int(ids[i]), ids, probs)


def _kth_largest(x: np.ndarray, k: int) -> float:
    """The k-th largest value of `x` (NaN ignored when a sample finds the answer).

    A partition of the whole row costs most of a sampled token on a 150k vocabulary, so
    first the k-th largest of every s-th value, t: at least k values of `x` are >= t, so
    the k-th largest of those alone (a few hundred, typically) is the answer."""
    n = len(x)
    stride = n // (64 * k)
    if stride >= 4:
        sub = x[::stride]
        t = np.partition(sub, len(sub) - k)[len(sub) - k]
        if t > NEG_INF:  # not NaN, not -inf
            pool = x[x >= t]
            return float(np.partition(pool, len(pool) - k)[len(pool) - k])
    return float(np.partition(x, n - k)[n - k])


def top_logprobs(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, logprobs) of the n most likely tokens of the full distribution, sorted."""
    lp = log_softmax(raw)
    n = min(n, len(lp))
    idx = np.argpartition(-lp, n - 1)[:n] if n < len(lp) else np.arange(len(lp))
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return idx, lp[idx]


def finite(v: float) -> float:
    return LOWEST if not math.isfinite(v) else float(v)
