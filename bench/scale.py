"""`python -m bench.scale`: refserver replicas behind smg, cache-aware vs round-robin routing.

3 replicas (each `-t 1`, pinned with taskset) behind `smg launch --policy P`, a multi-tenant
chat workload whose requests share long prefixes (bench/sessions.py).  Each round runs both
policies, in alternating order, on the same workload and freshly started replicas (empty
caches).  Reported per policy: prompt-cache hit ratio (prefix-cache hits / queried prompt
tokens, summed over the replicas' /metrics), mean and p95 time to first token at the
client, aggregate generated tokens/s; and `cache_aware_over_round_robin`.

    pip install smg   # the gateway; or give its path with --smg
    python -m bench.scale --json docs/bench/scale.json --plot docs/bench/scale.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from .fleet import Fleet, smg_binary, start_gateway
from .sessions import Outcome, SessionLoad, tenant_prefixes

POLICIES = ("cache_aware", "round_robin")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def _delta(before: list[dict], after: list[dict], name: str) -> list[float]:
    return [a.get(name, 0.0) - b.get(name, 0.0) for b, a in zip(before, after)]


def summarize(outcomes: list[Outcome], before: list[dict], after: list[dict], seconds: float) -> dict:
    ok = [o for o in outcomes if o.kind == "ok"]
    ttft = [o.ttft * 1e3 for o in ok if o.t_first]
    hits = _delta(before, after, "vllm:prefix_cache_hits_total")
    queries = _delta(before, after, "vllm:prefix_cache_queries_total")
    return {
        "requests": len(outcomes), "ok": len(ok), "errors": sum(o.kind == "error" for o in outcomes),
        "lost": sum(o.kind == "lost" for o in outcomes),
        "hit_ratio": sum(hits) / sum(queries) if sum(queries) else 0.0,
        "ttft_mean_ms": statistics.fmean(ttft) if ttft else float("nan"), "ttft_p95_ms": p95(ttft),
        "tokens_per_s": sum(o.n_tokens for o in ok) / seconds,
        "failures": dict(Counter(f"{o.kind}: {o.error}" for o in outcomes if o.kind != "ok").most_common(5)),
        "per_replica": {"hit_ratio": [h / q if q else 0.0 for h, q in zip(hits, queries)],
                        "prompt_tokens": queries},
    }


def run_policy(args, fleet: Fleet, policy: str, seed: int) -> dict:
    fleet.restart()
    model = fleet.model()
    gateway = start_gateway(smg_binary(args.smg), policy, fleet, model)
    try:
        before = fleet.metrics()
        load = SessionLoad(gateway.url, model, tenant_prefixes(args.tenants, seed), clients=args.clients,
                           turns=args.turns, max_tokens=args.max_tokens, seed=seed)
        t0 = time.monotonic()
        outcomes = load.run(args.seconds)
        seconds = time.monotonic() - t0
        after = fleet.metrics()
    finally:
        gateway.stop()
    out = summarize(outcomes, before, after, seconds)
    print(f"  {policy:12s} hit ratio {out['hit_ratio']:.3f}  TTFT mean {out['ttft_mean_ms']:.1f} ms "
          f"p95 {out['ttft_p95_ms']:.1f} ms  {out['tokens_per_s']:.1f} tok/s  "
          f"({out['ok']} ok, {out['errors']} errors, {out['lost']} lost)", flush=True)
    return out


def pooled(runs: list[dict]) -> dict:
    keys = ("hit_ratio", "ttft_mean_ms", "ttft_p95_ms", "tokens_per_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
        "lost": sum(r["lost"] for r in runs)}


def ratios(rounds: list[dict]) -> dict:
    """cache_aware / round_robin: the median of the per-round ratios (a round's two runs are
    minutes apart at most, so they share the machine's drift)."""
    out = {}
    for key, name in (("hit_ratio", "hit_ratio"), ("ttft_mean_ms", "ttft_mean"), ("ttft_p95_ms", "ttft_p95"),
                      ("tokens_per_s", "tokens_per_s")):
        per = [r["cache_aware"][key] / r["round_robin"][key] for r in rounds if r["round_robin"][key]]
        out[name] = statistics.median(per) if per else float("nan")
        out[name + "_per_round"] = per
    return out


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("hit_ratio", "prompt-cache hit ratio"), ("ttft_mean_ms", "TTFT mean (ms)"),
              ("ttft_p95_ms", "TTFT p95 (ms)"), ("tokens_per_s", "generated tokens/s")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for ax, (key, title) in zip(axes, panels):
        for i, policy in enumerate(POLICIES):
            values = [r[policy][key] for r in result["rounds"]]
            ax.bar(i, result["summary"][policy][key], color=("tab:green", "tab:gray")[i], alpha=0.7)
            ax.plot([i] * len(values), values, "k.", ms=6)
        ax.set_xticks(range(len(POLICIES)), POLICIES)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{result['config']['replicas']} refserver replicas behind smg: bars = median of "
                 f"{len(result['rounds'])} rounds, dots = rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--smg", help="path to the smg binary (default: smg on PATH)")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2, help="-np of each replica")
    ap.add_argument("--prompt-cache-size", type=int, default=4,
                    help="each replica's prompt-cache entries: the tenants' prefixes fit the fleet, not one replica")
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--clients", type=int, default=6, help="concurrent chat sessions")
    ap.add_argument("--turns", type=int, default=4, help="turns per session (each resends the conversation)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20, help="load per policy per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    smg_binary(args.smg)
    replica_args = ["-np", str(args.slots), "--prompt-cache-size", str(args.prompt_cache_size)]
    rounds = []
    with Fleet(args.replicas, replica_args) as fleet:
        print(f"replicas: {fleet.urls} (logs in {fleet.log_dir})", flush=True)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            rounds.append({policy: run_policy(args, fleet, policy, seed=r) for policy in order})
    result = {"config": vars(args) | {"json": str(args.json), "plot": str(args.plot), "replica_args": replica_args,
                                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "rounds": rounds, "summary": {p: pooled([r[p] for r in rounds]) for p in POLICIES},
              "cache_aware_over_round_robin": ratios(rounds)}
    print(json.dumps(result["cache_aware_over_round_robin"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        write_plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
