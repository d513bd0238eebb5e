"""Token sampling with llama.cpp's sampler chain, in numpy.

One `Sampler` is composed per request.  Order (llama.cpp `common_sampler`): logit_bias
(ignore_eos bans every end-of-generation id), penalties (always first; a "penalties"
entry in the `samplers` list is accepted and not applied twice), then the list (dry,
top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature with dynatemp), then a draw from
the request's own seeded Generator, so a seeded request is reproducible whatever else the
server runs.  `mirostat` 1 or 2 replaces the list by temperature and Mirostat's own
truncation, which adapts (state `mu`) to keep each token's surprise near `tau`.
Temperature <= 0 is greedy: argmax after bias, penalties, DRY and any grammar mask.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

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


def softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    if not np.isfinite(m):
        return np.full_like(x, 1.0 / len(x), dtype=np.float64)
    e = np.exp(x - m)
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x)
    return x - m - math.log(np.exp(x - m).sum())


class Sampler:
    """A request's sampler: its parameters, token history (for penalties) and RNG."""

    def __init__(self, params: SamplingParams, vocab_size: int, eog_ids: Sequence[int], seed: int,
                 history: Sequence[int] = (), dry_breakers: BreakerTable | None = None):
        self.params = params
        self.vocab_size = vocab_size
        self.seed = seed
        self.rng = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
        self.history: list[int] = list(history)
        bias = np.zeros(vocab_size, dtype=np.float64)
        for tok, b in params.logit_bias:
            if 0 <= tok < vocab_size:
                bias[tok] = NEG_INF if b == NEG_INF else bias[tok] + b
        if params.ignore_eos:
            for t in eog_ids:
                if 0 <= t < vocab_size:
                    bias[t] = NEG_INF
        self.bias = bias if (params.logit_bias or params.ignore_eos) else None
        self.greedy = params.temperature <= 0
        self.dry_breakers = dry_breakers or {}  # where DRY's sequence breakers occur (dry.py)
        names = list(params.samplers)
        if params.top_n_sigma > 0 and "top_n_sigma" not in names:  # llama.cpp's default place
            names.insert(names.index("dry") + 1 if "dry" in names else 0, "top_n_sigma")
        self.chain_names = tuple(names)
        self.mirostat = params.mirostat if params.mirostat in (1, 2) else 0
        self.mu = 2.0 * params.mirostat_tau  # Mirostat's running surprise bound
        # Greedy with nothing that moves a logit but bans (ignore_eos, -inf biases): the
        # argmax of the float32 row with the bans applied is the same token, without the
        # float64 copy of the vocabulary (this runs once per generated token).
        only_bans = bool(np.all((bias == 0) | (bias == NEG_INF)))
        self._banned = np.flatnonzero(bias == NEG_INF)
        self._banned_set = frozenset(self._banned.tolist())
        self._plain_greedy = (self.greedy and only_bans and not self._penalties_active()
                              and not ("dry" in self.chain_names and params.dry_multiplier > 0))

    @property
    def stateful(self) -> bool:
        """Whether a draw changes how later tokens are sampled (beyond the history):
        speculative verification cannot replay such a sampler."""
        return self.mirostat != 0 and not self.greedy

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
        self._penalties(x, self.history if history is None else history)
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
        """Finite (ids, logits), sorted descending."""
        ids = np.flatnonzero(np.isfinite(x))
        if len(ids) == 0:  # everything banned: fall back to the unbanned argmax source
            ids = np.array([int(np.argmax(x))])
        return cls._sorted(ids, x[ids])

    def chain(self, x: np.ndarray, history: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (ids, logits) after the samplers list, temperature included."""
        p = self.params
        ids, lg = self._candidates(x)  # sorted descending from here on
        min_keep = max(p.min_keep, 1)
        for name in self.chain_names:
            if len(ids) <= 1:
                break
            if name == "dry":
                pen = self._dry_penalties(history)
                if pen:
                    ids, lg = self._sorted(ids, lg - np.array([pen.get(int(i), 0.0) for i in ids]))
            elif name == "top_n_sigma":
                if p.top_n_sigma > 0:
                    keep = lg >= lg[0] - p.top_n_sigma * float(np.std(lg))
                    ids, lg = ids[keep], lg[keep]
            elif name == "top_k":
                if p.top_k > 0:
                    k = max(p.top_k, min_keep)
                    ids, lg = ids[:k], lg[:k]
            elif name in ("typ_p", "typical_p"):
                if p.typical_p < 1.0:
                    probs = softmax(lg)
                    ent = -float(np.sum(probs[probs > 0] * np.log(probs[probs > 0])))
                    with np.errstate(divide="ignore"):
                        shifted = np.abs(-np.log(probs) - ent)
                    idx = np.argsort(shifted, kind="stable")
                    cum = np.cumsum(probs[idx])
                    last = len(idx)
                    for i in range(len(idx)):
                        if cum[i] > p.typical_p and i >= min_keep - 1:
                            last = i + 1
                            break
                    keep = np.sort(idx[:last])
                    ids, lg = ids[keep], lg[keep]
            elif name == "top_p":
                if p.top_p < 1.0:
                    cum = np.cumsum(softmax(lg))
                    hit = np.flatnonzero(cum >= p.top_p)
                    last = len(ids) if len(hit) == 0 else int(hit[0]) + 1
                    last = max(last, min(min_keep, len(ids)))
                    ids, lg = ids[:last], lg[:last]
            elif name == "min_p":
                if p.min_p > 0.0:
                    keep = lg >= lg[0] + math.log(p.min_p)
                    n = max(int(keep.sum()), min(min_keep, len(ids)))
                    ids, lg = ids[:n], lg[:n]
            elif name == "xtc":
                if (p.xtc_probability > 0 and p.xtc_threshold <= 0.5
                        and self.rng.random() <= p.xtc_probability):
                    probs = softmax(lg)
                    above = np.flatnonzero(probs >= p.xtc_threshold)
                    pos_last = int(above[-1]) if len(above) and above[0] == 0 else 0
                    if pos_last > 0 and len(ids) - pos_last >= min_keep:
                        ids, lg = ids[pos_last:], lg[pos_last:]
            elif name == "temperature":
                lg = self._temperature(lg)
            # "penalties" (applied first) and unknown names: no effect here
        return ids, lg

    def _temperature(self, lg: np.ndarray) -> np.ndarray:
        p = self.params
        if p.dynatemp_range > 0:
            lo = max(0.0, p.temperature - p.dynatemp_range)
            hi = p.temperature + p.dynatemp_range
            if len(lg) <= 1:
                return lg
            probs = softmax(lg)
            nz = probs[probs > 0]
            ent = -float(np.sum(nz * np.log(nz)))
            norm = ent / math.log(len(lg))
            t = lo + (hi - lo) * norm ** p.dynatemp_exponent
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
        return ids, softmax(lg)

    def _mirostat(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Temperature, then Mirostat's truncation for the current `mu` (the draw and the
        update of `mu` happen in `sample`)."""
        ids, lg = self._candidates(x)
        probs = softmax(lg / self.params.temperature)
        if self.mirostat == 1:
            # Estimate the Zipf exponent s from the top m=100 tokens, then keep the k most
            # likely tokens for which the expected surprise is mu.
            m = min(100, len(probs))
            i = np.arange(m - 1, dtype=np.float64)
            t = np.log((i + 2) / (i + 1))
            with np.errstate(divide="ignore", invalid="ignore"):
                b = np.log(probs[: m - 1] / probs[1:m])
                s_hat = float(np.sum(t * b) / np.sum(t * t)) if m > 1 else float("nan")
                eps = s_hat - 1
                k = (eps * 2.0 ** self.mu / (1 - float(self.vocab_size) ** -eps)) ** (1 / s_hat)
            n = max(int(k), 1) if math.isfinite(k) else len(ids)
        else:  # keep the tokens up to the first whose surprise exceeds mu
            with np.errstate(divide="ignore"):
                over = np.flatnonzero(-np.log2(probs) > self.mu)
            n = max(int(over[0]) if len(over) else len(ids), 1)
        return ids[:n], probs[:n] / probs[:n].sum()

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
        if self.stateful:  # Mirostat: move mu toward the target surprise tau
            p = self.params
            self.mu -= p.mirostat_eta * (-math.log2(max(float(probs[i]), 1e-300)) - p.mirostat_tau)
        return Sampled(int(ids[i]), ids, probs)


def top_logprobs(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, logprobs) of the n most likely tokens of the full distribution, sorted."""
    lp = log_softmax(raw)
    n = min(n, len(lp))
    idx = np.argpartition(-lp, n - 1)[:n] if n < len(lp) else np.arange(len(lp))
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return idx, lp[idx]


def finite(v: float) -> float:
    return LOWEST if not math.isfinite(v) else float(v)
