"""A deterministic stand-in for a model, so the engine can be tested without ONNX.

`FakeBackend` implements the `Backend` interface faithfully: it keeps the token id
written at every arena position, so the engine's bookkeeping (trims by lowering pos,
`save_row`/`load_row`, junk written by idle rows in a batched call) is
actually exercised.  A step that claims positions holding junk or nothing raises.
Logits are a pure function of the last `context` tokens of the row's history, so they
do not depend on batching or chunking; `likely` sequences steer generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from backends.base import Backend, KVState, ModelInfo, Step

EMPTY = -1  # never written
JUNK = -2  # written by an idle row riding along in a batched decode call


class FakeBackend(Backend):
    """Logits depend only on the row's last `context` valid tokens.

    likely: token sequences; whenever the history ends with a proper prefix of one
    (at least one token), the sequence's next token gets `boost` added.
    """

    def __init__(self, vocab_size: int = 512, context_length: int = 2048, *, context: int = 3,
                 seed: int = 0, likely: Sequence[Sequence[int]] = (), boost: float = 12.0,
                 scale: float = 2.0, n_layers: int = 1):
        self.info = ModelInfo(path="fake", vocab_size=vocab_size, n_layers=n_layers, n_kv_heads=1,
                              head_dim=1, context_length=context_length, kv_dtype="float32",
                              layout="gqa", uses_position_ids=False)
        self.context = context
        self.seed = seed
        self.likely = [list(s) for s in likely]
        self.boost = boost
        self.scale = scale
        self.n_calls = 0
        self.arena = np.zeros((0, 0), dtype=np.int64)
        self._end: list[int] = []  # where each row's last write ended (dummy rows write there)
        self._base = lru_cache(maxsize=65536)(self._base_logits)

    # ------------------------------------------------------------------ logits
    def _base_logits(self, key: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, len(key), *key])
        return (rng.standard_normal(self.info.vocab_size) * self.scale).astype(np.float32)

    def logits_for(self, history: Sequence[int]) -> np.ndarray:
        """The logits after `history` (public so tests can compute expectations)."""
        key = tuple(int(t) for t in history[-self.context:])
        out = self._base(key).copy()
        for seq in self.likely:
            for j in range(min(len(seq) - 1, len(history)), 0, -1):
                if list(history[-j:]) == seq[:j]:
                    out[seq[j]] += self.boost
                    break
        return out

    # ------------------------------------------------------------------ interface
    def allocate(self, n_rows: int, row_len: int) -> None:
        self.arena = np.full((n_rows, row_len), EMPTY, dtype=np.int64)
        self._end = [0] * n_rows

    def forward(self, steps: Sequence[Step]) -> list[np.ndarray]:
        self.n_calls += 1
        rows = [s.row for s in steps]
        if len(set(rows)) != len(rows):
            raise ValueError("a row appears twice in one forward call")
        n_rows, row_len = self.arena.shape
        out = []
        for s in steps:
            if not 0 <= s.row < n_rows:
                raise IndexError(f"row {s.row} out of range")
            if not s.tokens:
                raise ValueError("empty step")
            if s.pos < 0 or s.pos + len(s.tokens) > row_len:
                raise ValueError(f"step [{s.pos}, {s.pos + len(s.tokens)}) exceeds row length {row_len}")
            if s.pos and (self.arena[s.row, :s.pos] < 0).any():
                raise AssertionError(f"row {s.row}: positions below {s.pos} hold no valid KV")
            for t in s.tokens:
                if not 0 <= t < self.info.vocab_size:
                    raise ValueError(f"token {t} out of vocabulary")
            self.arena[s.row, s.pos:s.pos + len(s.tokens)] = s.tokens
            self._end[s.row] = s.pos + len(s.tokens)
            hist = self.arena[s.row, :s.pos + len(s.tokens)].tolist()
            if s.all_logits:
                out.append(np.stack([self.logits_for(hist[:s.pos + i + 1]) for i in range(len(s.tokens))]))
            else:
                out.append(self.logits_for(hist)[None, :])
        # Rows not in the call ride along as dummies and write junk just past their data,
        # as the ONNX backend's batched decode does.
        for r in range(n_rows):
            if r not in rows and self._end[r] < row_len:
                self.arena[r, self._end[r]] = JUNK
        return out

    def save_row(self, row: int, length: int) -> KVState:
        ids = self.arena[row, :length].astype(np.float32)
        keys = [ids.reshape(1, length, 1).copy() for _ in range(self.info.n_layers)]
        values = [k.copy() for k in keys]
        return KVState(keys, values, length)

    def load_row(self, row: int, state: KVState) -> None:
        n = state.length
        self.arena[row, :n] = state.keys[0][0, :n, 0].astype(np.int64)
        self._end[row] = n
