"""Profile the server's decode loop and HTTP path with py-spy: `python -m bench.profile`.

    python -m bench.profile [--streams 1 8] [--tokens 256] [--rate 250] [--native]

Starts refserver on the bench model (`-np 8`), attaches `py-spy record --threads --idle`
to it, drives N concurrent streaming `/completion` requests for each N in --streams, and
prints, per thread (engine thread, IOLoop thread), where the samples went: inclusive time
of the functions that matter and the top self-time lines.  Raw collapsed stacks and a
speedscope file go to bench/.cache/profile/ (open the latter at speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .client import completion_body, concurrent_streams
from .server import ROOT, Server

OUT = ROOT / "bench" / ".cache" / "profile"


def find_py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy); it also needs ptrace rights")
    return exe


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


IDLE_MARKERS = ("wait (threading.py", "select (selectors.py", "_run_once (asyncio", "poll (selectors",
                "epoll", "_wait_for_tstate_lock")


def summarize(stacks, top: int = 18) -> str:
    by_thread: dict[str, list] = collections.defaultdict(list)
    for frames, n in stacks:
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        by_thread[thread].append((frames, n))
    lines = []
    for thread, items in sorted(by_thread.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        total = sum(n for _, n in items)
        busy = [(f, n) for f, n in items if not any(m in f[-1] for m in IDLE_MARKERS)]
        busy_n = sum(n for _, n in busy)
        lines.append(f"\n=== {thread}: {total} samples, {busy_n} busy ({busy_n / max(1, total):.0%})")
        incl: collections.Counter = collections.Counter()
        self_: collections.Counter = collections.Counter()
        for frames, n in busy:
            seen = set()
            for f in frames[1:]:
                name = f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rstrip(")") + ")" if " (" in f else f
                if name not in seen:
                    incl[name] += n
                    seen.add(name)
            self_[frames[-1]] += n
        lines.append("  inclusive (share of busy samples):")
        for name, n in incl.most_common(top):
            lines.append(f"    {n / max(1, busy_n):6.1%}  {name}")
        lines.append("  self (leaf lines):")
        for name, n in self_.most_common(top):
            lines.append(f"    {n / max(1, busy_n):6.1%}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model dir (default: the bench model, fp32)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    a = p.parse_args(argv)
    py_spy = find_py_spy()
    if a.model is None:
        from tools import make_bench_model

        a.model = make_bench_model.build(ROOT / "bench" / ".cache") / "onnx-fp32"
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    with Server(a.model, ["-np", "8", "-c", "2048", "-t", str(a.threads), "--temp", "0"]) as srv:
        concurrent_streams(srv.port, [completion_body([0, 5, 6, 7], 16) for _ in range(2)])  # warm-up
        for n in a.streams:
            base = OUT / f"streams{n}"
            cmd = [py_spy, "record", "--pid", str(srv.pid), "--threads", "--idle", "--rate", str(a.rate),
                   "--format", "raw", "-o", str(base) + ".txt"]
            if a.native:
                cmd.append("--native")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
            t0 = time.perf_counter()
            aggs = []
            for _ in range(a.rounds):
                bodies = [completion_body([0] + [rng.randrange(4, 4096) for _ in range(31)], a.tokens)
                          for _ in range(n)]
                _, agg = concurrent_streams(srv.port, bodies)
                aggs.append(agg)
            dt = time.perf_counter() - t0
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
            print(f"\n##### {n} stream(s) x {a.tokens} tokens x {a.rounds} rounds: {dt:.1f} s, aggregate "
                  f"{', '.join(f'{x:.0f}' for x in aggs)} tok/s")
            raw = Path(str(base) + ".txt")
            if not raw.exists():
                print(f"py-spy wrote nothing: {spy.stderr.read()[-1000:] if spy.stderr else ''}")
                continue
            print(summarize(load(raw)))
            (OUT / f"streams{n}.json").write_text(json.dumps({"aggregate_tok_s": aggs, "seconds": dt}))
    print(f"\nraw stacks in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
