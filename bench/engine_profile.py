"""cProfile of the engine thread on a model, no HTTP: where a token's time goes.

    python -m bench.engine_profile MODEL_DIR [--streams 1] [--tokens 64] [--sampled] [--full-sort]

Loads the backend and tokenizer, starts refserver's `Engine`, submits `--streams`
concurrent requests of `--tokens` tokens each (greedy, or llama.cpp's default sampling with
`--sampled`), profiles the engine thread and prints the functions with the most own time,
plus the share of the thread outside the model call (`run_with_iobinding`).  `--full-sort`
makes the sampler sort the whole row as it did before the top-k partition path.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import threading
import time

import backends
from refserver.engine.engine import Engine, EngineConfig
from refserver.engine.sampling import Sampler
from refserver.engine.types import Failed, Finished, GenerationRequest, SamplingParams
from refserver.tokenizer import TextTokenizer

SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


def profile_engine(model: str, streams: int, tokens: int, sampled: bool, threads: int) -> tuple[pstats.Stats, float]:
    """(stats of the engine thread, wall seconds) for one batch of requests."""
    prof = cProfile.Profile()
    run = Engine._run
    engine = Engine(backends.load(model, "cpu", threads=threads), TextTokenizer(model),
                    EngineConfig(n_slots=streams, n_ctx=streams * (tokens + 64)))
    engine._run = lambda: prof.runcall(run, engine)  # the thread's target, looked up at start()
    engine.start()
    done = threading.Semaphore(0)

    def sink(event) -> None:
        if isinstance(event, (Finished, Failed)):
            done.release()

    params = SamplingParams(ignore_eos=True, seed=3, **(SAMPLED if sampled else {"temperature": 0.0}))
    t0 = time.perf_counter()
    for i in range(streams):
        engine.submit(GenerationRequest([0] + [100 + 7 * i + j for j in range(31)], params, n_predict=tokens), sink)
    for _ in range(streams):
        done.acquire()
    wall = time.perf_counter() - t0
    engine.shutdown()
    return pstats.Stats(prof), wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sampled", action="store_true")
    p.add_argument("--full-sort", action="store_true")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    if a.full_sort:
        Sampler._leading_top_k = lambda self: None
    stats, wall = profile_engine(a.model, a.streams, a.tokens, a.sampled, a.threads)
    total = stats.total_tt
    model = sum(v[2] for k, v in stats.stats.items() if "run_with_iobinding" in k[2])
    print(f"{a.streams} stream(s) x {a.tokens} tokens, {'sampled' if a.sampled else 'greedy'}"
          f"{', full sort' if a.full_sort else ''}: wall {wall:.2f} s, {a.streams * a.tokens / wall:.1f} tok/s; "
          f"engine thread {total:.2f} s, model call {model / total:.1%}, outside it "
          f"{(total - model) * 1e3 / (a.streams * a.tokens):.2f} ms per token")
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("tottime").print_stats(a.top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-3000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
