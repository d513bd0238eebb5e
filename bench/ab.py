"""Server settings compared side by side against the raw loop: `python -m bench.ab`.

    python -m bench.ab "--stream-interval-ms 10" "--stream-interval-ms 25" [--rounds 10]

Starts one refserver per setting (each string is extra server arguments) on the bench
model, all at once, and runs rounds: the raw backend loop on the round's prompt, then one
streaming `/completion` to every server in turn (the order alternating between rounds).
Prints, per setting, the median of the per-round ratios HTTP / raw and their range: a
setting's effect measured in one run, with the machine's drift shared by every pair.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys

from .client import completion_body, stream_completion
from .runner import Bench
from .server import Server
from .stats import paired_ratio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", help="extra refserver arguments, one quoted string per server")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--tokens", type=int, default=256, help="new tokens per stream")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    bench = Bench(argparse.Namespace(quick=True, threads=a.threads))
    model = bench.model() / "onnx-fp32"
    bench.mode = type(bench.mode)(**{**bench.mode.__dict__, "n_new": a.tokens})
    base = bench.server_args(8, 8 * bench.mode.slot_ctx)
    raw: list[float] = []
    http: list[list[float]] = [[] for _ in a.settings]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(Server(model, base + shlex.split(s))) for s in a.settings]
        for srv in servers:
            bench._check(stream_completion(srv.port, completion_body(bench.prompts[-1], 16)))  # warm-up
        for r in range(a.rounds):
            prompt = bench.prompts[r % len(bench.prompts)]
            raw.append(bench.worker("raw", model, prompts=[prompt])["runs"][0]["decode_tok_s"])
            order = range(len(servers)) if r % 2 == 0 else reversed(range(len(servers)))
            for i in order:
                res = bench._check(stream_completion(servers[i].port, completion_body(prompt, a.tokens)))
                http[i].append(res.decode_tok_s)
            bench.say(f"round {r + 1}/{a.rounds}: raw {raw[-1]:.1f} tok/s, HTTP "
                      + ", ".join(f"{h[-1]:.1f}" for h in http))
    print("\nHTTP / raw loop, median of the per-round ratios (range):")
    for setting, values in zip(a.settings, http):
        st = paired_ratio(values, raw)
        print(f"  {setting or '(defaults)':40s} {st.median:.3f} ({st.lo:.3f}–{st.hi:.3f})" if st else
              f"  {setting:40s} n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
