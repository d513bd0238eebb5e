"""The one interface between refserver's engine and a model runtime.

A backend owns a KV *arena*: `n_rows` rows of `row_len` positions each, one row per
slot.  The engine keeps, for every row, how many positions hold valid KV (its `pos`);
the backend itself is told the position with every step, so trimming a row (prompt
cache reuse, rejected speculative tokens) is only the engine lowering its `pos`.

Example::

    backend = backends.load("path/to/model", device="cpu", threads=2)
    backend.allocate(n_rows=2, row_len=256)
    first = backend.forward([Step(row=0, pos=0, tokens=prompt_ids)])[0]   # [1, vocab]
    nxt = int(first[-1].argmax())
    logits = backend.forward([Step(row=0, pos=len(prompt_ids), tokens=[nxt]),
                              Step(row=1, pos=0, tokens=other_prompt)])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a loaded model, read from the graph itself."""

    path: str
    vocab_size: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    kv_dtype: str  # numpy dtype name of the KV cache: "float32" or "float16"
    layout: str  # "gqa": past/present share one buffer; "plain": present = concat(past, new)
    uses_position_ids: bool
    n_params: int = 0
    size_bytes: int = 0
    device: str = "cpu"


@dataclass
class Step:
    """One sequence's share of a forward call.

    The backend writes the KV of `tokens` at positions [pos, pos + len(tokens)) of
    `row` and attends to [0, pos + len(tokens)).  Logits come back for the last token,
    or for every token with `all_logits` (speculative verification).
    """

    row: int
    pos: int
    tokens: list[int]
    all_logits: bool = False


@dataclass
class KVState:
    """A host copy of the first `length` positions of one row (prompt-cache entries)."""

    keys: list[np.ndarray]  # per layer: [n_kv_heads, length, head_dim]
    values: list[np.ndarray]
    length: int = field(default=0)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def trimmed(self, length: int) -> KVState:
        """The first `length` positions, sharing memory with this state."""
        length = min(length, self.length)
        return KVState([k[:, :length] for k in self.keys], [v[:, :length] for v in self.values], length)


class Backend(ABC):
    """A loaded model plus its KV arena.  Not thread-safe: one engine thread drives it."""

    info: ModelInfo
    #: model invocations (e.g. ONNX Runtime `run` calls) since load; the engine exposes it
    n_calls: int = 0

    @abstractmethod
    def allocate(self, n_rows: int, row_len: int) -> None:
        """(Re)allocate the KV arena; previous contents are lost."""

    @abstractmethod
    def forward(self, steps: Sequence[Step]) -> list[np.ndarray]:
        """Run one forward step over a batch; returns float32 logits per step,
        shaped [len(tokens), vocab] with `all_logits`, else [1, vocab].

        Single-token steps of different rows are batched into one model call; a
        multi-token step may need a call of its own where the layout demands it.
        """

    @abstractmethod
    def save_row(self, row: int, length: int) -> KVState:
        """Copy the first `length` KV positions of `row` to host memory."""

    @abstractmethod
    def load_row(self, row: int, state: KVState) -> None:
        """Write `state` into positions [0, state.length) of `row`."""

    def close(self) -> None:
        """Release the runtime session and the arena."""
