"""Median and spread of repeated measurements."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values) -> Stat:
        values = [float(v) for v in values]
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative width of the range."""
        return (self.hi - self.lo) / self.median if self.median else float("nan")

    def fmt(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.lo:.{digits}f}–{self.hi:.{digits}f})"

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n,
                "spread": self.spread}


def paired_ratio(a: list[float], b: list[float]) -> Stat | None:
    """The ratios a[i] / b[i] of runs made side by side (round i of an interleaved loop).

    Their median is the estimate the bench reports: the machine's speed drifts over
    minutes, and a pair run seconds apart shares that drift, which a ratio of the two
    medians taken over the whole loop does not cancel."""
    pairs = [x / y for x, y in zip(a, b) if y and math.isfinite(x) and math.isfinite(y)]
    if not pairs or len(a) != len(b):
        return None
    return Stat.of(pairs)


def paired_rows(rows: dict, spec: dict[str, tuple[str, str]]) -> tuple[dict, dict]:
    """For each `key: (row a, row b)` of `spec`, the median of the per-round ratios of the
    two rows' `values` (None if either is missing), and {key: that Stat as a dict}."""
    out, pairs = {}, {}
    for key, (a, b) in spec.items():
        p = paired_ratio(rows.get(a, {}).get("values", []), rows.get(b, {}).get("values", []))
        out[key] = p.median if p else None
        if p:
            pairs[key] = p.as_dict()
    return out, pairs


def ratio(a: Stat | None, b: Stat | None) -> float | None:
    """median(a) / median(b), or None when either is missing."""
    if a is None or b is None or not b.median or a.n == 0 or b.n == 0:
        return None
    return a.median / b.median
