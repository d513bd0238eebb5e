"""Speculative decoding: a draft model proposes, the main model verifies in one step.

The draft keeps its own arena row per slot; `Drafter.tokens[row]` lists the tokens
whose KV is valid there (trimming = shortening the list, as for the main model).
Before proposing, the draft catches up with the main sequence (common prefix, then
feed the rest).  Proposals are the draft's argmax tokens, stopping when its top
probability falls below p_min.  The draft is thus a deterministic proposal (q is
one-hot), and `verify` applies the standard rejection rule against the main model's
final sampling distribution p: accept d with probability min(1, p(d)/q(d)) = p(d); on
reject draw from normalize(max(0, p - q)) = p without d; if all are accepted draw a
bonus token from p.  The output distribution is exactly the main model's; at
temperature <= 0 it is argmax matching, so the text equals a run without a draft.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backends.base import Backend, Step
from refserver.engine.sampling import Sampler, softmax
from refserver.engine.slots import common_prefix


@dataclass
class DraftWant:
    row: int
    seq: list[int]  # main sequence: tokens in the main KV + the pending token
    n_max: int
    p_min: float
    banned: tuple[int, ...] = ()  # tokens the main sampler can never pick (-inf bias, ignore_eos)


class Drafter:
    def __init__(self, backend: Backend, n_rows: int, row_len: int, n_batch: int):
        self.backend = backend
        self.row_len = row_len
        self.n_batch = max(1, n_batch)
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        backend.allocate(n_rows, row_len)

    def mirror(self, steps: Sequence[Step], before: dict[int, list[int]]) -> None:
        """Feed the draft the prompt chunks the main model just took, for rows in sync."""
        todo = [s for s in steps if self.tokens[s.row] == before.get(s.row)]
        if not todo:
            return
        self.backend.forward([Step(s.row, s.pos, list(s.tokens)) for s in todo])
        for s in todo:
            self.tokens[s.row] = self.tokens[s.row] + list(s.tokens)

    def propose(self, wants: Sequence[DraftWant]) -> dict[int, list[int]]:
        """Draft tokens per row (possibly empty); batched over rows, one call per depth."""
        out: dict[int, list[int]] = {w.row: [] for w in wants}
        live: dict[int, np.ndarray] = {}
        # catch up: feed what the draft row lacks of the main sequence
        todo = {}
        for w in wants:
            if w.n_max <= 0 or len(w.seq) >= self.row_len:
                continue
            c = common_prefix(self.tokens[w.row], w.seq)
            c = min(c, len(w.seq) - 1)  # feed at least the last token to get its logits
            self.tokens[w.row] = self.tokens[w.row][:c]
            todo[w.row] = w.seq[c:]
        while todo:
            steps = [Step(r, len(self.tokens[r]), toks[: self.n_batch]) for r, toks in todo.items()]
            logits = self.backend.forward(steps)
            nxt = {}
            for s, lg in zip(steps, logits):
                self.tokens[s.row] = self.tokens[s.row] + s.tokens
                rest = todo[s.row][len(s.tokens):]
                if rest:
                    nxt[s.row] = rest
                else:
                    live[s.row] = lg[-1]
            todo = nxt
        by_row = {w.row: w for w in wants}
        while live:
            feed = []
            for r, lg in live.items():
                w = by_row[r]
                if w.banned:  # never propose what verification must reject
                    lg = lg.copy()
                    lg[list(w.banned)] = -np.inf
                d = int(np.argmax(lg))
                if softmax(lg.astype(np.float64))[d] < w.p_min:
                    continue
                out[r].append(d)
                room = self.row_len - len(self.tokens[r]) - 1
                if len(out[r]) < w.n_max and room > 0:
                    feed.append(Step(r, len(self.tokens[r]), [d]))
            live = {}
            if feed:
                logits = self.backend.forward(feed)
                for s, lg in zip(feed, logits):
                    self.tokens[s.row].append(s.tokens[0])
                    live[s.row] = lg[-1]
        return out


@dataclass
class Verified:
    token: int
    index: int  # row of the verify logits that produced it
    from_draft: bool


def verify(sampler: Sampler, logits: np.ndarray, drafts: Sequence[int]) -> list[Verified]:
    """Tokens to emit after a verify step over [pending, *drafts] (logits [k+1, V]):
    the accepted drafts, then one token drawn by the main model (correction or bonus)."""
    hist = list(sampler.history)
    out: list[Verified] = []
    for i, d in enumerate(drafts):
        ids, probs = sampler.distribution(logits[i], None, hist)
        if sampler.greedy:
            tok = int(ids[0])
            if tok != d:
                out.append(Verified(tok, i, False))
                return out
        else:
            p = np.zeros(sampler.vocab_size)
            p[ids] = probs
            if sampler.rng.random() < p[d]:
                tok = d
            else:
                p[d] = 0.0
                if p.sum() <= 0:  # cannot happen with p(d) < 1; guard anyway
                    p[ids] = probs
                out.append(Verified(sampler.draw(p) if len(ids) > 1 else int(ids[0]), i, False))
                return out
        out.append(Verified(d, i, True))
        hist.append(d)
    k = len(drafts)
    ids, probs = sampler.distribution(logits[k], None, hist)
    tok = int(ids[0]) if len(ids) == 1 else int(ids[sampler.draw(probs)])
    out.append(Verified(tok, k, False))
    return out
