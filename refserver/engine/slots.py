"""Per-slot and per-request state of the engine (plain data, touched only by its thread).

A slot owns one arena row in the main model (and in the draft).  `cache` lists the
tokens whose KV is valid in that row, so `len(cache)` is the row's pos: trimming is
just shortening the list.  A `Task` is one request's progress through a slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from refserver.engine.sampling import Sampler
from refserver.engine.textstream import TextStream
from refserver.engine.types import Event, GenerationRequest, SpeculativeParams


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RequestHandle:
    """What `Engine.submit` returns: the request's id, the slot serving it (-1 until it has
    one; set by the engine thread before the request's first event) and a thread-safe cancel."""

    def __init__(self, id: int):
        self.id = id
        self.id_slot = -1
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class Task:
    handle: RequestHandle
    request: GenerationRequest
    sink: Callable[[Event], None]
    sampler: Sampler
    stream: TextStream
    n_predict: int  # effective; -1 = unlimited
    seed: int
    constraint: Any = None  # constraints.ConstraintState or None
    spec: SpeculativeParams | None = None  # None: no speculation for this request
    budget: Any = None  # budget.BudgetState or None
    n_prompt_reused: int = 0  # prompt tokens reused
    next_idx: int = 0  # next prompt token to evaluate
    pending: int | None = None  # sampled, not yet in the KV (None while pre-filling)
    refill: list[int] = field(default_factory=list)  # after a context shift: kept tokens to re-evaluate
    n_decoded: int = 0
    draft_n: int = 0
    draft_accepted: int = 0
    t_start: float = 0.0  # prefill start
    t_prompt_done: float = 0.0
    prompt_probs: list = field(default_factory=list)  # with request.prompt_logprobs: TokenProbs | None each

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt

    @property
    def generating(self) -> bool:
        return self.pending is not None

    def timings(self, now: float | None = None, draft: bool = False) -> dict:
        now = time.perf_counter() if now is None else now
        prompt_n = len(self.prompt) - self.n_prompt_reused
        prompt_ms = ((self.t_prompt_done or now) - self.t_start) * 1000.0
        predicted_ms = (now - self.t_prompt_done) * 1000.0 if self.t_prompt_done else 0.0
        out = {
            "cache_n": self.n_prompt_reused,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1000.0 * prompt_n / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": self.n_decoded,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / self.n_decoded if self.n_decoded else 0.0,
            # one token gives no rate (llama.cpp reports 0.0 then)
            "predicted_per_second": 1000.0 * self.n_decoded / predicted_ms
            if predicted_ms > 0 and self.n_decoded > 1 else 0.0,
        }
        if draft:
            out["draft_n"] = self.draft_n
            out["draft_n_accepted"] = self.draft_accepted
        return out


@dataclass
class Slot:
    id: int
    cache: list[int] = field(default_factory=list)  # tokens with valid KV in the main row
    task: Task | None = None
    last_used: int = 0  # engine step counter at release (LRU tie-break)

    @property
    def busy(self) -> bool:
        return self.task is not None
