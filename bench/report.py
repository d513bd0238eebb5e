"""The Markdown table and the tokens/s-vs-concurrency plot of one bench run."""

from __future__ import annotations

import re
from pathlib import Path


def _plain(label: str) -> str:
    """A row label without its leading "(n) "."""
    return re.sub(r"^\(\d+\) ", "", label)


def _fmt(s: dict | None, digits: int = 1) -> str:
    if not s:
        return "–"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_markdown(out: dict, path: Path, plot: str | None = None) -> Path:
    """docs/bench/results*.md: the header, one table row per bench row, the ratios."""
    lines = _header(out) + ["", "| # | what | decode tok/s | TTFT ms | notes |", "|---|---|---|---|---|"]
    for num, key, note in _ROWS:
        lines += _row(out, num, key, note)
    lines += _concurrency(out["rows"]) + _cache_and_spec(out["rows"]) + _memory(out["rows"]) + _ratios(out)
    if out["notes"]:
        lines += [""] + [f"- {n}" for n in out["notes"]]
    if plot:
        lines += ["", f"![aggregate decode tokens/s against concurrent streams]({plot})"]
    lines.append("")
    path.write_text("\n".join(lines))
    return path


_ROWS = [(1, "raw", "backend `forward` + argmax, no HTTP (the floor)"),
         (2, "http", "one streaming `/completion` client"),
         (3, "genai", "`og.Generator`, intra_op_num_threads set"),
         (4, "llama", "low-level `eval` + argmax"),
         ("", "raw_int4", ""), ("", "genai_int4", ""),
         (9, "small_raw", "the embedded chat model: little model time, so the gap to HTTP is refserver's cost"),
         (9, "small_http", ""),
         *((10, key, "") for key in ("bigvocab_raw", "bigvocab_genai", "bigvocab_http", "bigvocab_http_sampled",
                                     "bigvocab_batch1", "bigvocab_batch8", "bigvocab_raw_b1", "bigvocab_raw_b8")),
         *((11, key, "") for key in ("vllm", "vllm_refserver", "vllm_b8", "vllm_refserver_b8"))]


def _header(out: dict) -> list[str]:
    m, model = out["machine"], out["model"]
    return [
        "# refserver benchmark results",
        "",
        f"`{out['command']}` — {out['date']}, {out['mode']} mode, {out['elapsed_s']:.0f} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads per engine; load average "
        f"{m['loadavg_start'][0]} at start, {m['loadavg_end'][0]} at end. "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        (f"Model: `{model['name']}`, a random-weight Llama of {model['params_m']}M parameters (hidden "
         f"{model['hidden_size']}, {model['num_hidden_layers']} layers, {model['num_attention_heads']}/"
         f"{model['num_key_value_heads']} heads, ffn {model['intermediate_size']}, vocab {model['vocab_size']}), "
         "fp32, made by `tools/make_bench_model.py`. Greedy, end-of-generation banned, "
         f"{out['settings']['prompt_len']}-token prompts, {out['settings']['n_new']} new tokens; "
         f"median (min–max) of {out['settings']['repeats']} runs."),
    ]


def _row(out: dict, num, key: str, note: str) -> list[str]:
    r = out["rows"].get(key)
    if r is None:
        return []
    if "skipped" in r:
        return [f"| {num} | {_plain(r['label'])} | skipped | | {r['skipped']} |"]
    match = out.get("token_match_vs_raw", {})
    extra = [note] if note else []
    if key in match:
        first = match.get(key + "_first_divergence")
        extra.append(f"greedy tokens equal to raw: {match[key]:.0%}"
                     + (f" (first difference at token {first})" if first is not None else ""))
    if r.get("cpu_ms_per_token"):
        extra.append(f"CPU {r['cpu_ms_per_token']:.2f} ms/token")
    if r.get("server_cpu_ms_per_token"):
        extra.append(f"server CPU {r['server_cpu_ms_per_token']:.2f} ms/token, of which IOLoop thread "
                     f"{r['ioloop_cpu_ms_per_token']:.2f}")
    if r.get("rss_mib"):
        extra.append(f"RSS {r['rss_mib']:.0f} MiB")
    return [(f"| {num} | {_plain(r['label'])} | {_fmt(r.get('stat'))} | "
            f"{_fmt(r.get('ttft_ms'))} | {'; '.join(extra)} |")]


def _concurrency(rows: dict) -> list[str]:
    lines = []
    for n, c in rows.get("concurrency", {}).get("levels", {}).items():
        lines.append(f"| 5 | {n} concurrent stream(s), aggregate | {_fmt(c['aggregate'])} | | "
                     f"per stream {c['per_stream']['median']:.1f} tok/s; server CPU "
                     f"{c.get('server_cpu_ms_per_token', float('nan')):.2f} ms/token, IOLoop thread "
                     f"{c.get('ioloop_cpu_ms_per_token', float('nan')):.2f} |")
    ceiling = rows.get("raw_batch", {}).get("levels", {})
    if ceiling:
        lines.append("| 5 | the ceiling: raw backend, B rows per decode call | "
                     + ", ".join(f"B={b} {v:.0f}" for b, v in ceiling.items()) + " tok/s | | "
                     "no HTTP, no sampling: what batching can give on this machine |")
    return lines


def _cache_and_spec(rows: dict) -> list[str]:
    lines = []
    for key in ("ttft_cold", "ttft_hit"):
        r = rows.get(key)
        if r:
            note = f"cache_n {r['cache_n']}" if r.get("cache_n") is not None else "`-np 1 -c 2048`"
            lines.append(f"| 6 | {r['label']} | | {_fmt(r['stat'])} | {note} |")
    spec = rows.get("spec")
    if spec and "skipped" in spec:
        lines.append(f"| 7 | speculative decoding | skipped | | {spec['skipped']} |")
    for key in ("spec_off", "spec_on"):
        r = rows.get(key)
        if r:
            note = f"pooled over all answers: {r['pooled_tok_s']:.1f} tok/s" if r.get("pooled_tok_s") else ""
            if "draft_n" in r:
                note += (f"; draft accepted {r['draft_n_accepted']}/{r['draft_n']}; same tokens as without: "
                         f"{r['same_tokens']}")
            lines.append(f"| 7 | {r['label']} | {_fmt(r['stat'])} | | {note} |")
    return lines


def _memory(rows: dict) -> list[str]:
    mem = rows.get("memory")
    if not mem:
        return []
    over_raw = mem.get("server_over_raw_loop_idle_mib")
    return [f"| 8 | server RSS, idle | | | {mem['rss_idle_mib']:.0f} MiB = weights {mem['weights_mib']:.0f} + "
            f"{mem['beyond_weights_idle_mib']:.0f} MiB (KV arena pages not touched yet)"
            + (f"; {over_raw:.0f} MiB more than the raw loop process" if over_raw is not None else "")
            + " |",
            (f"| 8 | server RSS, peak | | | {mem['rss_peak_mib']:.0f} MiB = weights + KV arena "
            f"{mem['kv_arena_mib']:.0f} + {mem['beyond_weights_kv_peak_mib']:.0f} MiB (prompt-cache KV "
            "copies, buffers, heap) |")]


def _ratios(out: dict) -> list[str]:
    pairs = out.get("paired_ratios", {})

    def spread(key: str) -> str:
        p = pairs.get(key)
        return f"{p['min']:.3f}–{p['max']:.3f}" if p else ""

    lines = ["", ("Ratios of rows run side by side are the median of the per-round ratios (range "
                  "shown); the others are ratios of medians."), "",
             "| ratio | value | per-round range | first threshold | goal | status |",
             "|---|---|---|---|---|---|"]
    for key, t in out["thresholds"].items():
        sign = "≥" if t["dir"] == "ge" else "≤"
        lines.append(f"| `{key}` | {_ratio(out.get(key))} | {spread(key)} | {sign} {t['first']} | "
                     f"{sign} {t['goal']} | {t['status']} |")
    for key in ("over_llama_cpp", "raw_batch8_over_batch1", "http_ttft_over_raw", "raw_over_onnxruntime_genai",
                "small_http_over_raw",
                "small_overhead_ms_per_token", "bigvocab_raw_over_onnxruntime_genai", "bigvocab_sampled_over_greedy",
                "bigvocab_raw_batch8_over_batch1", "vllm_ttft_over_refserver"):
        lines.append(f"| `{key}` | {_ratio(out.get(key))} | {spread(key)} | | | |")
    return lines


def write_plot(out: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    conc = {int(n): c for n, c in out["rows"].get("concurrency", {}).get("levels", {}).items()}
    if not conc:
        return None
    ns = sorted(int(n) for n in conc)
    agg = [conc[n]["aggregate"] for n in ns]
    per = [conc[n]["per_stream"] for n in ns]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.errorbar(ns, [a["median"] for a in agg],
                yerr=[[a["median"] - a["min"] for a in agg], [a["max"] - a["median"] for a in agg]],
                marker="o", capsize=4, label="refserver, aggregate")
    ax.plot(ns, [p["median"] for p in per], marker="s", linestyle="--", label="refserver, per stream")
    ceiling = {int(b): v for b, v in out["rows"].get("raw_batch", {}).get("levels", {}).items()}
    if ceiling:
        bs = sorted(ceiling)
        ax.plot(bs, [ceiling[b] for b in bs], marker="^", linestyle=":", color="black",
                label="raw backend, B rows per call (ceiling)")
    for key, label, style in (("raw", "raw backend loop (1 stream)", ":"),
                              ("genai", "onnxruntime-genai (1 stream)", "-."),
                              ("llama", "llama.cpp (1 stream)", (0, (5, 1)))):
        st = out["rows"].get(key, {}).get("stat")
        if st:
            ax.axhline(st["median"], linestyle=style, color="gray", linewidth=1,
                       label=f"{label}: {st['median']:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("concurrent streams (-np 8)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{out['model']['name']} ({out['model']['params_m']}M, fp32), "
                 f"{out['machine']['cores']}-core CPU", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
