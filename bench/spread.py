"""Several bench runs side by side: `python -m bench.spread RUN.json [RUN.json ...]`.

One run's ratio can be made by one busy minute, so a threshold is claimed only when every
run meets it.  Prints a Markdown table: each ratio's value per run (with its per-round range
where it has one), its threshold and goal, and the status it holds in all the runs: `goal`
or `pass` when every run reaches it, `FAIL` when any run misses the first threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = ("FAIL", "pass", "goal")  # a ratio holds the weakest status any run gave it


def _cell(run: dict, key: str) -> str:
    value = run.get(key)
    if value is None:
        return "–"
    rounds = run.get("paired_ratios", {}).get(key)
    span = f" ({rounds['min']:.2f}–{rounds['max']:.2f})" if rounds else ""
    return f"{value:.3f}{span}"


def table(runs: list[dict]) -> str:
    """The Markdown table of every threshold key in `runs`, then the other ratios."""
    keys = list(dict.fromkeys(k for run in runs for k in run.get("thresholds", {})))
    head = "| ratio | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | threshold → goal | in every run |"
    lines = [head, "|" + "---|" * (len(runs) + 3)]
    for key in keys:
        limits = next(run["thresholds"][key] for run in runs if key in run.get("thresholds", {}))
        statuses = [run.get("thresholds", {}).get(key, {}).get("status") for run in runs]
        held = min((s for s in statuses if s in ORDER), key=ORDER.index, default="–")
        if any(s not in ORDER for s in statuses):
            held = f"{held} (not in every run)"
        sign = "≥" if limits["dir"] == "ge" else "≤"
        lines.append(f"| `{key}` | " + " | ".join(_cell(run, key) for run in runs)
                     + f" | {sign} {limits['first']} → {limits['goal']} | {held} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="JSON files written by python -m bench --json")
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    for i, (path, run) in enumerate(zip(args.runs, runs)):
        print(f"run {i + 1}: {path} — {run.get('date', '?')}, {run.get('elapsed_s', 0):.0f} s, "
              f"load {run.get('machine', {}).get('loadavg_start', ['?'])[0]} at start")
    print()
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
