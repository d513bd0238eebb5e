"""A token budget for a delimited span of the output (llama.cpp's `--reasoning-budget`):
once `start` has been generated (or from the first token when the prompt opened the span),
at most `n` tokens follow before `end` is forced, token by token, unless the model wrote
`end` itself.  The engine knows nothing of reasoning: the HTTP layer passes the token ids
of `<think>` and `</think>`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpanBudget:
    start: tuple[int, ...]
    end: tuple[int, ...]
    n: int
    opened: bool = False  # the prompt ends inside the span


@dataclass
class BudgetState:
    budget: SpanBudget
    inside: bool = False
    closed: bool = False
    used: int = 0
    tail: list[int] = field(default_factory=list)
    forcing: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inside = self.budget.opened

    def forced(self) -> int | None:
        """The token the budget forces next, if any."""
        return self.forcing[0] if self.forcing else None

    def accept(self, token: int) -> None:
        """Track one generated token."""
        b = self.budget
        if self.closed:
            return
        if self.forcing:
            self.forcing.pop(0)
            self.closed = not self.forcing
            return
        self.tail = (self.tail + [token])[-max(len(b.start), len(b.end)):]
        if not self.inside:
            self.inside = tuple(self.tail[-len(b.start):]) == b.start
            return
        if tuple(self.tail[-len(b.end):]) == b.end:
            self.closed = True
            return
        self.used += 1
        if self.used >= b.n:
            self.forcing = list(b.end)
