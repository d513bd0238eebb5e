"""Batching rows measured round by round, so a busy minute cannot make a ratio.

Each round runs refserver with 1, 2, 4 and 8 concurrent streams back to back, then the raw
backend's ceiling (B rows per decode call, a fresh process) for the same B's; the ratios
`batch8_over_batch1` and `raw_batch8_over_batch1` are medians of per-round ratios, with
their per-round ranges beside them (`paired_ratios` in the JSON).
"""

from __future__ import annotations

from .client import completion_body, concurrent_streams
from .server import Server
from .stats import Stat, paired_ratio


def concurrency_rounds(bench, srv: Server, onnx) -> None:
    """Rows `concurrency` (levels with per-round `values`) and `raw_batch` (median levels
    plus per-round `values`), each round running every level of both."""
    m = bench.mode
    levels = list(m.concurrency)
    agg: dict[int, list] = {n: [] for n in levels}
    per_stream: dict[int, list] = {n: [] for n in levels}
    cpu: dict[int, list] = {n: [0.0, 0.0, 0] for n in levels}  # IOLoop s, server s, tokens
    raw: dict[str, list] = {str(n): [] for n in levels}
    spec = {"kind": "raw_batch", "model": str(onnx), "prompts": bench.prompts[: max(levels)], "n_new": m.n_new,
            "threads": bench.threads, "ctx": m.slot_ctx, "ban": bench.ban(onnx), "batches": levels}
    concurrent_streams(srv.port, [completion_body(bench.prompts[-1 - i], 16) for i in range(8)])  # warm-up
    for r in range(m.repeats):
        for n in levels:
            bodies = [completion_body(bench._fresh_prompt(m.prompt_len), m.n_new) for _ in range(n)]
            c0 = srv.cpu()
            results, rate = concurrent_streams(srv.port, bodies)
            c1 = srv.cpu()
            for res in results:
                bench._check(res)
            agg[n].append(rate)
            per_stream[n].append(sum(res.decode_tok_s for res in results) / len(results))
            cpu[n][0] += c1[0] - c0[0]
            cpu[n][1] += c1[1] - c0[1]
            cpu[n][2] += sum(res.n_predicted for res in results)
        for b, v in bench._run_worker(spec)["levels"].items():
            raw[b].append(v)
        bench.say(f"    round {r + 1}/{m.repeats}: HTTP " + ", ".join(f"{n}: {agg[n][-1]:.0f}" for n in levels)
                  + "; raw " + ", ".join(f"B={b}: {v[-1]:.0f}" for b, v in raw.items()) + " tok/s")
    conc = {}
    for n in levels:
        io, total, tok = cpu[n]
        conc[n] = {"aggregate": Stat.of(agg[n]).as_dict(), "per_stream": Stat.of(per_stream[n]).as_dict(),
                   "values": agg[n], "ioloop_cpu_ms_per_token": io * 1e3 / max(1, tok),
                   "server_cpu_ms_per_token": total * 1e3 / max(1, tok)}
        bench.say(f"    {n} stream(s): {Stat.of(agg[n]).fmt()} tok/s aggregate, "
                  f"{Stat.of(per_stream[n]).median:.1f} tok/s per stream; IOLoop thread "
                  f"{conc[n]['ioloop_cpu_ms_per_token']:.2f} ms CPU per token")
    bench.rows["concurrency"] = {"label": "aggregate decode vs concurrency (levels interleaved per round)",
                                 "levels": conc}
    bench.rows["raw_batch"] = {"label": "raw backend, B rows per decode call (one run per round)", "unit": "tok/s",
                               "levels": {b: Stat.of(v).median for b, v in raw.items()}, "values": raw}
    bench.say("    raw ceiling " + ", ".join(f"B={b}: {Stat.of(v).fmt(0)}" for b, v in raw.items()) + " tok/s")


def batch_ratios(rows: dict) -> tuple[dict, dict]:
    """batch8_over_batch1 and raw_batch8_over_batch1 as medians of per-round ratios."""
    conc = rows.get("concurrency", {}).get("levels", {})
    raw = rows.get("raw_batch", {}).get("values", {})
    pairs = {"batch8_over_batch1": paired_ratio(conc.get(8, {}).get("values", []), conc.get(1, {}).get("values", [])),
             "raw_batch8_over_batch1": paired_ratio(raw.get("8", []), raw.get("1", []))}
    return ({k: p.median if p else None for k, p in pairs.items()},
            {k: p.as_dict() for k, p in pairs.items() if p})
