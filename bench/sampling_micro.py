"""Per-token sampling cost on a wide vocabulary, full sort vs top-k partition, side by side.

    python -m bench.sampling_micro [--vocab 151936] [--rows 8] [--rounds 7]

Times `Sampler.sample` on random float32 logits rows for a few common requests, each round
running the full-sort path (the chain sorting the whole row) and the partition path
(`Sampler._top_candidates`) back to back in one process, so load on the machine hits both
alike; prints the median and range of the per-round times and of their ratio.  The cost is
what the engine thread spends per generated token between two model calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from refserver.engine.sampling import Sampler
from refserver.engine.types import SamplingParams

from .stats import Stat

REQUESTS = {  # name -> SamplingParams fields
    "llama.cpp defaults (top_k 40, top_p 0.95, min_p 0.05, temp 0.8)": {},
    "top_k 40 + repeat_penalty 1.1": {"repeat_penalty": 1.1},
    "greedy (temperature 0)": {"temperature": 0.0},
}


def time_sampling(params: dict, rows: np.ndarray, full_sort: bool) -> float:
    """Milliseconds per sampled token over `rows`."""
    s = Sampler(SamplingParams(**params), rows.shape[1], eog_ids=[1], seed=5, history=list(range(64)))
    if full_sort:
        s._top_k_at = None
    t0 = time.perf_counter()
    for row in rows:
        s.accept(s.sample(row).token)
    return (time.perf_counter() - t0) * 1e3 / len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", type=int, default=8, help="tokens sampled per timing")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((a.rows, a.vocab)) * 3).astype(np.float32)
    print(f"vocab {a.vocab}, {a.rows} tokens per timing, {a.rounds} alternating rounds")
    for name, params in REQUESTS.items():
        full, part = [], []
        for _ in range(a.rounds):
            full.append(time_sampling(params, rows, True))
            part.append(time_sampling(params, rows, False))
        ratio = Stat.of(f / q for f, q in zip(full, part))
        print(f"  {name}:\n    full sort {Stat.of(full).fmt(2)} ms/token, partition {Stat.of(part).fmt(2)} "
              f"ms/token; full/partition {ratio.fmt(2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
