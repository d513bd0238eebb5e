"""The bench itself: `Bench` runs the rows `python -m bench` lists (bench/__main__.py), in
their own processes, and gathers every number, ratio and threshold into one dict."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import bigvocab, interleave, vllm_peer
from .client import completion_body, stream_completion
from .server import ROOT, Server
from .stats import Stat, paired_ratio, ratio

CACHE = ROOT / "bench" / ".cache"
OUT_DIR = ROOT / "docs" / "bench"
CHAT_MODEL = ROOT / "refserver" / "models" / "chat"
DRAFT_MODEL = ROOT / "refserver" / "models" / "draft"
THRESHOLDS = {  # key: (first threshold, goal, "ge" | "le")
    "http_over_raw": (0.9, 0.95, "ge"),
    "batch8_over_batch1": (2.0, 4.0, "ge"),
    "cache_hit_ttft_over_miss": (0.2, 0.1, "le"),
    "over_onnxruntime_genai": (0.8, 1.0, "ge"),
    "spec_speedup": (1.2, 1.5, "ge"),
    **bigvocab.THRESHOLDS,
    **vllm_peer.THRESHOLDS,
}
SPEC_PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, a small dog named Max found a big red ball in the garden.",
    "Tom and his mom went to the store to buy some apples. On the way,",
    "There was a boy who liked to look at the stars every night. One night,",
    "The cat sat on the mat and looked at the bird in the tree.",
]


@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int
    n_new: int  # tokens per stream
    prompt_len: int
    long_prompt: int
    concurrency: tuple[int, ...]
    spec_n: int
    slot_ctx: int  # tokens per slot for the -np 8 server (and the in-process loops)


QUICK = Mode("quick", repeats=9, n_new=256, prompt_len=32, long_prompt=1024, concurrency=(1, 2, 4, 8),
             spec_n=128, slot_ctx=512)
FULL = Mode("full", repeats=15, n_new=256, prompt_len=32, long_prompt=1024, concurrency=(1, 2, 4, 8),
            spec_n=256, slot_ctx=512)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.mode = QUICK if args.quick else FULL
        self.threads = args.threads
        self.t0 = time.monotonic()
        self.rows: dict[str, dict] = {}  # name -> {"stat": {...}, ...}
        self.notes: list[str] = []
        rng = random.Random(20261122)
        m = self.mode
        # prompts: BOS + random ids (the random model does not care what they say)
        self.vocab_lo, self.vocab_hi = 4, 4096
        self.prompts = [[0] + [rng.randrange(self.vocab_lo, self.vocab_hi) for _ in range(m.prompt_len - 1)]
                        for _ in range(max(m.repeats, max(m.concurrency)) * 2)]
        self.rng = rng

    # ------------------------------------------------------------------ output
    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def record(self, key: str, label: str, stat: Stat | None, unit: str, **extra) -> None:
        """One row; `values=[...]` (one per round of an interleaved loop) lets `summary`
        pair it with the other engines of that loop."""
        self.rows[key] = {"label": label, "unit": unit, "stat": stat.as_dict() if stat else None, **extra}
        if stat is not None:
            self.say(f"    {label}: {stat.fmt()} {unit} (median, min–max of {stat.n})")

    def skip(self, key: str, label: str, why: str) -> None:
        self.rows[key] = {"label": label, "skipped": why}
        self.notes.append(f"{label}: skipped: {why}")
        self.say(f"    {label}: SKIPPED: {why}")

    # ------------------------------------------------------------------ model
    def model(self) -> Path:
        from tools import make_bench_model  # numpy, safetensors; the builder runs in a subprocess

        self.say("bench model (tools/make_bench_model.py; cached in bench/.cache/)")
        root = make_bench_model.build(CACHE)
        self.model_root = root
        self.hf_config = json.loads((root / "hf" / "config.json").read_text())
        n_params = sum(int(x) for x in _param_count(self.hf_config))
        self.model_info = {"name": root.name, "params_m": round(n_params / 1e6, 1),
                           **{k: self.hf_config[k] for k in ("hidden_size", "num_hidden_layers",
                                                             "num_attention_heads", "num_key_value_heads",
                                                             "intermediate_size", "vocab_size")}}
        self.say(f"    {self.model_info}")
        return root

    # ------------------------------------------------------------------ in-process loops
    def worker(self, kind: str, model: Path, python: str = sys.executable, ctx: int | None = None,
               prompts: list | None = None) -> dict:
        m = self.mode
        spec = {"kind": kind, "model": str(model), "prompts": prompts or self.prompts[:m.repeats], "n_new": m.n_new,
                "threads": self.threads, "ctx": ctx or m.slot_ctx, "ban": self.ban(model)}
        return self._run_worker(spec, python)

    def ban(self, model: Path) -> list[int]:
        """The ids refserver bans under `ignore_eos` for `model` (a model directory, or the
        bench model's GGUF): its whole end-of-generation set, e.g. `</s>` and `<|im_end|>`.
        Every engine bans the same ids, or greedy runs part where a banned id would win."""
        from refserver.tokenizer import TextTokenizer

        directory = model if model.is_dir() else self.model_root / "onnx-fp32"
        return sorted(TextTokenizer(directory).eog_ids)

    def _run_worker(self, spec: dict, python: str = sys.executable) -> dict:
        kind = spec["kind"]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run([python, "-m", "bench.workers", json.dumps(spec)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} worker failed ({done.returncode}): {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def loop_rows(self, engines: list[tuple], rounds: int, per_round=None, ctx: int | None = None) -> None:
        """Each round runs every engine (a fresh process each) on that round's prompt, then
        `per_round(r)`; interleaving spreads the machine's drift over all engines alike."""
        runs: dict[str, list] = {e[0]: [] for e in engines}
        extra: dict[str, list] = {e[0]: [] for e in engines}
        for r in range(rounds):
            for key, label, kind, model, python in engines:
                out = self.worker(kind, model, python, ctx=ctx, prompts=[self.prompts[r]])
                runs[key] += out["runs"]
                extra[key].append(out)
                run = out["runs"][0]
                self.say(f"    round {r + 1}/{rounds} {label}: {run['decode_tok_s']:.1f} tok/s, "
                         f"TTFT {run['ttft_ms']:.1f} ms")
            if per_round is not None:
                per_round(r)
        for key, label, kind, model, python in engines:
            rs, outs = runs[key], extra[key]
            self.record(key, label, Stat.of(x["decode_tok_s"] for x in rs), "tok/s",
                        values=[x["decode_tok_s"] for x in rs],
                        ttft_ms=Stat.of(x["ttft_ms"] for x in rs).as_dict(),
                        rss_mib=max(o["rss_mib_loaded"] for o in outs),
                        cpu_ms_per_token=sum(o["cpu_ms_per_token"] for o in outs) / len(outs),
                        version=outs[0].get("version"))
            self.say(f"    TTFT {Stat.of(x['ttft_ms'] for x in rs).fmt()} ms")
            self.tokens[key] = [x["tokens"] for x in rs]

    def llama_python(self) -> str | None:
        """An interpreter that can import llama_cpp: this one, --llama-python, $BENCH_LLAMA_PYTHON,
        or ../venv-llama next to the repository."""
        candidates = [sys.executable, self.args.llama_python, os.environ.get("BENCH_LLAMA_PYTHON"),
                      str(ROOT.parent / "venv-llama" / "bin" / "python")]
        for py in candidates:
            if py and Path(py).exists():
                ok = subprocess.run([py, "-c", "import llama_cpp"], capture_output=True, check=False).returncode == 0
                if ok:
                    return py
        return None

    # ------------------------------------------------------------------ HTTP rows
    def server_args(self, parallel: int, ctx: int) -> list[str]:
        """`-np parallel` slots of `ctx / parallel` tokens each (split, not unified: every
        stream gets its own room, as the in-process loops do)."""
        return ["-np", str(parallel), "-c", str(ctx), "--no-kv-unified", "-t", str(self.threads), "--temp", "0"]

    def http_rows(self, onnx: Path, engines: list[tuple]) -> None:
        m = self.mode
        self.say(f"refserver HTTP: starting server (-np 8 -c {8 * m.slot_ctx} -t {self.threads}) ...")
        with Server(onnx, self.server_args(8, 8 * m.slot_ctx)) as srv:
            mem_idle = srv.memory_kib()
            self.say(f"    up on port {srv.port}, pid {srv.pid}, RSS {mem_idle.get('VmRSS', 0) / 1024:.0f} MiB")
            self._check(stream_completion(srv.port, completion_body(self.prompts[-1], 16)))  # warm-up
            labels = ", ".join(e[1] for e in engines)
            self.say(f"(2) refserver over HTTP, one streaming client, interleaved with {labels} ...")
            results, cpu_used, n_tok = [], [0.0, 0.0], 0

            def http_round(r: int) -> None:
                nonlocal n_tok
                self._warm_up(srv)
                c0 = srv.cpu()
                res = self._check(stream_completion(srv.port, completion_body(self.prompts[r], m.n_new,
                                                                              return_tokens=True)))
                c1 = srv.cpu()
                cpu_used[0] += c1[0] - c0[0]
                cpu_used[1] += c1[1] - c0[1]
                n_tok += res.n_predicted
                results.append(res)
                self.say(f"    round {r + 1}/{m.repeats} refserver HTTP: {res.decode_tok_s:.1f} tok/s, "
                         f"TTFT {res.ttft_ms:.1f} ms")

            self.loop_rows(engines, m.repeats, http_round)
            self.tokens["http"] = [r.tokens for r in results]
            cpu = {"ioloop_cpu_ms_per_token": cpu_used[0] * 1e3 / max(1, n_tok),
                   "server_cpu_ms_per_token": cpu_used[1] * 1e3 / max(1, n_tok)}
            self.record("http", "(2) refserver HTTP, 1 stream", Stat.of(r.decode_tok_s for r in results), "tok/s",
                        values=[r.decode_tok_s for r in results],
                        ttft_ms=Stat.of(r.ttft_ms for r in results).as_dict(),
                        server_decode_tok_s=Stat.of(r.final.get("timings", {}).get("predicted_per_second", 0)
                                                    for r in results).as_dict(), **cpu)
            self.say(f"    CPU per token: IOLoop thread {cpu['ioloop_cpu_ms_per_token']:.2f} ms, "
                     f"whole server {cpu['server_cpu_ms_per_token']:.2f} ms")
            self.say(f"    TTFT {Stat.of(r.ttft_ms for r in results).fmt()} ms")

            self.say("(5) aggregate decode tok/s vs concurrent streams ...")
            interleave.concurrency_rounds(self, srv, onnx)

            self.say("(8) server memory ...")
            mem_end = srv.memory_kib()
            self.memory_row(onnx, mem_idle, mem_end, 8, m.slot_ctx)

    def memory_row(self, onnx: Path, idle: dict, end: dict, rows: int, row_len: int) -> None:
        c = self.hf_config
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        kv = c["num_hidden_layers"] * 2 * rows * c["num_key_value_heads"] * (row_len + 1) * head_dim * 4
        weights = sum(f.stat().st_size for f in onnx.iterdir() if f.name.startswith("model.onnx"))
        mib = 2 ** 20
        rss = idle.get("VmRSS", 0) * 1024
        hwm = end.get("VmHWM", 0) * 1024
        raw = self.rows.get("raw", {}).get("rss_mib")
        # The arena is np.zeros: its pages become resident only once written, so at idle RSS
        # holds no KV; at the peak (after every concurrency run) part of it plus the prompt
        # cache's KV copies.  The peak figure subtracts the whole arena, so it is a lower bound
        # for what is not weights or arena.
        row = {"label": "server memory", "rss_idle_mib": rss / mib, "rss_peak_mib": hwm / mib,
               "weights_mib": weights / mib, "kv_arena_mib": kv / mib, "raw_loop_rss_mib": raw,
               "beyond_weights_idle_mib": (rss - weights) / mib,
               "beyond_weights_kv_peak_mib": (hwm - weights - kv) / mib,
               "server_over_raw_loop_idle_mib": (rss / mib - raw) if raw else None}
        self.rows["memory"] = row
        self.say(f"    RSS idle {row['rss_idle_mib']:.0f} MiB = weights {row['weights_mib']:.0f} + "
                 f"{row['beyond_weights_idle_mib']:.0f} MiB (arena not yet touched)"
                 + (f"; {row['server_over_raw_loop_idle_mib']:.0f} MiB more than the raw loop process "
                    f"({raw:.0f} MiB)" if raw else ""))
        self.say(f"    RSS peak {row['rss_peak_mib']:.0f} MiB = weights + KV arena {row['kv_arena_mib']:.0f} MiB + "
                 f"{row['beyond_weights_kv_peak_mib']:.0f} MiB (prompt cache copies, buffers, heap)")

    def cache_row(self, onnx: Path) -> None:
        m = self.mode
        n = m.long_prompt
        self.say(f"(6) TTFT of a {n}-token prompt, cold vs cache hit (-np 1 -c 2048) ...")
        with Server(onnx, self.server_args(1, 2048)) as srv:
            self._check(stream_completion(srv.port, completion_body(self._fresh_prompt(n), 2)))  # warm-up
            cold, hit = [], []
            for _ in range(m.repeats):
                prompt = self._fresh_prompt(n)
                cold.append(self._check(stream_completion(srv.port, completion_body(prompt, 2))).ttft_ms)
                follow = prompt + [self.rng.randrange(self.vocab_lo, self.vocab_hi) for _ in range(8)]
                r = self._check(stream_completion(srv.port, completion_body(follow, 2)))
                hit.append(r.ttft_ms)
                cached = r.final.get("timings", {}).get("cache_n")
            self.record("ttft_cold", f"TTFT {n}-token prompt, cold", Stat.of(cold), "ms", values=cold)
            self.record("ttft_hit", "TTFT same prefix + 8 tokens, cache hit", Stat.of(hit), "ms",
                        cache_n=cached, values=hit)

    def small_row(self) -> None:
        """The embedded chat model (a few M parameters): model time is small, so the gap
        between the raw loop and HTTP is refserver's own per-token cost."""
        m = self.mode
        self.say("(9) small model: embedded chat model, raw loop vs HTTP (per-token overhead) ...")
        config = json.loads((CHAT_MODEL / "config.json").read_text())
        n_params = sum(int(x) for x in _param_count(config))
        results = []
        with Server(CHAT_MODEL, self.server_args(1, 2048)) as srv:
            self._check(stream_completion(srv.port, completion_body(self.prompts[-1], 16)))

            def http_round(r: int) -> None:
                self._warm_up(srv)
                res = self._check(stream_completion(srv.port, completion_body(self.prompts[r], m.n_new)))
                results.append(res)
                self.say(f"    round {r + 1}/{m.repeats} refserver HTTP: {res.decode_tok_s:.1f} tok/s")

            self.loop_rows([("small_raw", f"small model ({n_params / 1e6:.1f}M) raw backend loop", "raw",
                             CHAT_MODEL, sys.executable)], m.repeats, http_round, ctx=2048)
        self.record("small_http", f"small model ({n_params / 1e6:.1f}M) refserver HTTP, 1 stream",
                    Stat.of(r.decode_tok_s for r in results), "tok/s", values=[r.decode_tok_s for r in results],
                    ttft_ms=Stat.of(r.ttft_ms for r in results).as_dict())

    def spec_row(self) -> None:
        m = self.mode
        self.say("(7) speculative decoding: embedded chat model, with vs without the embedded draft, temp 0 ...")
        draft = self.args.draft
        if not (draft / "model.onnx").is_file():
            self.skip("spec", "speculative decoding", f"no draft model at {_rel(draft)} yet")
            return
        # Both servers stay up and take turns, so drift on the machine hits both alike.  Stories
        # end with EOS as they would for a user (ignore_eos off: a draft that proposes an EOS the
        # target has banned would measure that, not speculation); temperature 0 makes both
        # runs produce the same tokens, so the speedup is the ratio of total decode times.
        outs: dict[str, list] = {"plain": [], "spec": []}
        with Server(CHAT_MODEL, self.server_args(1, 2048)) as plain_srv, \
                Server(CHAT_MODEL, self.server_args(1, 2048) + ["-md", str(draft)]) as spec_srv:
            servers = {"plain": plain_srv, "spec": spec_srv}
            for srv in servers.values():
                self._check(stream_completion(srv.port, completion_body(SPEC_PROMPTS[-1], 16)))  # warm-up
            prompts = spec_prompts()
            per_round: dict[str, list] = {"plain": [], "spec": []}  # pooled tok/s of each round
            rounds = 2 * m.repeats  # short answers of a tiny model: more of them
            for r in range(rounds):
                for p in prompts:
                    for name, srv in servers.items():
                        body = completion_body(p, m.spec_n, return_tokens=True, cache_prompt=False,
                                               ignore_eos=False)
                        outs[name].append(self._check(stream_completion(srv.port, body)))
                for name in servers:
                    per_round[name].append(_pooled(outs[name][-len(prompts):]))
                self.say(f"    round {r + 1}/{rounds}: no draft {_pooled(outs['plain']):.1f} tok/s, "
                         f"draft {_pooled(outs['spec']):.1f} tok/s (pooled so far)")
        plain, spec = outs["plain"], outs["spec"]
        same = all(a.tokens == b.tokens for a, b in zip(plain, spec))
        drafted = sum(r.final.get("timings", {}).get("draft_n", 0) for r in spec)
        accepted = sum(r.final.get("timings", {}).get("draft_n_accepted", 0) for r in spec)
        n_tok = sum(r.n_predicted for r in plain)
        self.record("spec_off", "chat model, no draft", Stat.of(r.decode_tok_s for r in plain), "tok/s",
                    pooled_tok_s=_pooled(plain), tokens=n_tok, round_tok_s=per_round["plain"])
        self.record("spec_on", "chat model + draft (-md)", Stat.of(r.decode_tok_s for r in spec), "tok/s",
                    pooled_tok_s=_pooled(spec), round_tok_s=per_round["spec"], draft_n=drafted, draft_n_accepted=accepted, same_tokens=same)
        self.say(f"    pooled decode: {_pooled(plain):.1f} → {_pooled(spec):.1f} tok/s over {n_tok} tokens; "
                 f"draft tokens accepted {accepted}/{drafted}; same tokens as without draft: {same}")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _cpu_per_token(srv: Server, before: tuple[float, float], n_tokens: int) -> dict:
        main, total = srv.cpu()
        n = max(1, n_tokens)
        return {"ioloop_cpu_ms_per_token": (main - before[0]) * 1e3 / n,
                "server_cpu_ms_per_token": (total - before[1]) * 1e3 / n}

    def _warm_up(self, srv: Server) -> None:
        """A short request on an unrelated prompt before a measured one: each in-process
        loop warms up in its fresh process before it is timed, and the server, idle while
        the other engines ran, gets the same (no prefix is shared beyond BOS, so the
        measured prompt is not a cache hit)."""
        self._check(stream_completion(srv.port, completion_body(self._fresh_prompt(self.mode.prompt_len), 16)))

    def _fresh_prompt(self, n: int) -> list[int]:
        return [0] + [self.rng.randrange(self.vocab_lo, self.vocab_hi) for _ in range(n - 1)]

    @staticmethod
    def _check(res):
        if res.error:
            raise RuntimeError(f"request failed: {res.error}")
        return res

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        a = self.args
        m = self.mode
        self.tokens: dict[str, list] = {}
        load0 = os.getloadavg()
        self.say(f"python -m bench ({m.name}): {m.repeats} repeats, {m.n_new} new tokens, {self.threads} threads; "
                 f"load average {load0[0]:.2f}")
        root = self.model()
        onnx = root / "onnx-fp32"
        engines = [("raw", "(1) raw backend loop (fp32)", "raw", onnx, sys.executable),
                   ("genai", "(3) onnxruntime-genai Generator (fp32)", "genai", onnx, sys.executable)]
        llama_label = "(4) llama.cpp (llama-cpp-python, f32 GGUF)"
        if not a.with_llama_cpp:
            self.skip("llama", llama_label, "pass --with-llama-cpp to run it")
        else:
            py = self.llama_python()
            if py is None:
                self.skip("llama", llama_label,
                          "llama-cpp-python is not installed (pip install llama-cpp-python, or "
                          "--llama-python PATH to an interpreter that has it)")
            elif not (root / "gguf" / "bench-llama-f32.gguf").is_file():
                self.skip("llama", llama_label, "no GGUF of the bench model (pip install gguf, then rerun)")
            else:
                engines.append(("llama", llama_label, "llama", root / "gguf" / "bench-llama-f32.gguf", py))
        self.http_rows(onnx, engines)
        if m.name != "quick":
            self.say("int4 (for reference) ...")
            self.loop_rows([("raw_int4", "raw backend loop (int4)", "raw", root / "onnx-int4", sys.executable),
                            ("genai_int4", "onnxruntime-genai Generator (int4)", "genai", root / "onnx-int4",
                             sys.executable)], m.repeats)
        self.cache_row(onnx)
        self.small_row()
        self.spec_row()
        if a.with_vllm is not None:
            vllm_peer.vllm_rows(self, a.with_vllm, onnx, root / "hf")
        else:
            self.skip("vllm", "(11) vLLM CPU", "pass --with-vllm VENV to run it")
        if a.bigvocab:
            bigvocab.BigVocabRows(self, bigvocab.QUICK if m.name == "quick" else bigvocab.FULL).run()
        else:
            self.skip("bigvocab", f"(10) {bigvocab.VOCAB:,}-token vocabulary rows", "--no-bigvocab")
        result = self.summary(load0)
        return result

    def summary(self, load0) -> dict:
        r = self.rows

        def st(key):
            s = r.get(key, {}).get("stat")
            return Stat(s["median"], s["min"], s["max"], s["n"]) if s else None

        pairs = {}

        def side_by_side(a: str, b: str, name: str) -> float | None:
            """Median of the per-round ratios when both rows ran in one interleaved loop."""
            p = paired_ratio(r.get(a, {}).get("values", []), r.get(b, {}).get("values", []))
            if p is None:
                return ratio(st(a), st(b))
            pairs[name] = p.as_dict()
            return p.median

        ratios = {
            "http_over_raw": side_by_side("http", "raw", "http_over_raw"),
            "over_onnxruntime_genai": side_by_side("http", "genai", "over_onnxruntime_genai"),
            "over_llama_cpp": side_by_side("http", "llama", "over_llama_cpp"),
            "raw_over_onnxruntime_genai": side_by_side("raw", "genai", "raw_over_onnxruntime_genai"),
            "small_http_over_raw": side_by_side("small_http", "small_raw", "small_http_over_raw"),
            "cache_hit_ttft_over_miss": side_by_side("ttft_hit", "ttft_cold", "cache_hit_ttft_over_miss"),
            "spec_speedup": (r["spec_on"]["pooled_tok_s"] / r["spec_off"]["pooled_tok_s"]
                             if "spec_on" in r and "spec_off" in r else None),
        }
        for more, more_pairs in (interleave.batch_ratios(r), bigvocab.ratios(r), vllm_peer.ratios(r)):
            ratios.update(more)
            pairs.update(more_pairs)
        spec_rounds = paired_ratio(r.get("spec_on", {}).get("round_tok_s", []),
                                   r.get("spec_off", {}).get("round_tok_s", []))
        if spec_rounds is not None:  # the headline stays the pooled ratio; this is its per-round spread
            pairs["spec_speedup"] = spec_rounds.as_dict()
        sh, sr = st("small_http"), st("small_raw")
        if sh and sr and sh.n and sr.n:
            # what refserver adds per token: the gap between the two, in ms
            ratios["small_overhead_ms_per_token"] = 1e3 / sh.median - 1e3 / sr.median
        http_ttft = r.get("http", {}).get("ttft_ms")
        raw_ttft = r.get("raw", {}).get("ttft_ms")
        if http_ttft and raw_ttft:
            ratios["http_ttft_over_raw"] = http_ttft["median"] / raw_ttft["median"]
        match = {}
        refs = {"http": "raw", "genai": "raw", "llama": "raw", "genai_int4": "raw_int4"}
        for k, toks in self.tokens.items():
            ref = self.tokens.get(refs.get(k, ""))
            if ref:
                match[k] = sum(a == b for x, y in zip(ref, toks) for a, b in zip(x, y)) / max(
                    1, sum(min(len(x), len(y)) for x, y in zip(ref, toks)))
                # where the first run that differs first differs (fp32 engines sum in different
                # orders, so a near-tie can flip late in a long greedy run)
                firsts = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
                          for x, y in zip(ref, toks)]
                diverged = [f for f in firsts if f is not None]
                match[k + "_first_divergence"] = min(diverged) if diverged else None
        checks = {}
        for key, (first, goal, how) in THRESHOLDS.items():
            v = ratios.get(key)
            if v is None:
                checks[key] = "n/a"
            elif (v >= goal) if how == "ge" else (v <= goal):
                checks[key] = "goal"
            elif (v >= first) if how == "ge" else (v <= first):
                checks[key] = "pass"
            else:
                checks[key] = "FAIL"
        load1 = os.getloadavg()
        out = {
            **ratios,
            "mode": self.mode.name,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "machine": machine_info(self.threads, load0, load1),
            "model": self.model_info,
            "settings": {"repeats": self.mode.repeats, "n_new": self.mode.n_new, "prompt_len": self.mode.prompt_len,
                         "long_prompt": self.mode.long_prompt, "slot_ctx": self.mode.slot_ctx,
                         "threads": self.threads},
            "token_match_vs_raw": match,
            "paired_ratios": pairs,
            "thresholds": {k: {"first": f, "goal": g, "dir": h, "status": checks[k]}
                           for k, (f, g, h) in THRESHOLDS.items()},
            "rows": r,
            "notes": self.notes,
        }
        return out


SPEC_FAMILIES = ("story", "tool", "json", "echo", "chat", "story", "tool", "capital")


def spec_prompts() -> list[str]:
    """Held-out prompts of the embedded models' own task families (tools/corpus.py), the
    workload they were trained for; the fixed story openings if the corpus is unavailable."""
    try:
        from tools import corpus

        c = corpus.Corpus(seed=2026, held_out=True)
        prompts = [c.example(i, f).prompt for i, f in enumerate(SPEC_FAMILIES)]
        return [p.removeprefix(corpus.BOS) for p in prompts]  # the server adds BOS
    except Exception:  # noqa: BLE001 - any failure: fall back to plain stories
        return list(SPEC_PROMPTS)


def _pooled(results) -> float:
    """All tokens after the first over all decode time (requests of any length)."""
    n = sum(r.n_predicted - 1 for r in results)
    t = sum(r.t_end - r.t_first for r in results)
    return n / t if t > 0 else float("nan")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _param_count(c: dict):
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    yield 2 * v * h + h
    yield c["num_hidden_layers"] * (h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h)


def machine_info(threads: int, load0, load1) -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("onnxruntime", "onnxruntime_genai", "numpy", "tornado"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1],
            "versions": versions}


def print_summary(out: dict) -> None:
    print("\n== ratios ==")
    for key in ("http_over_raw", "over_onnxruntime_genai", "over_llama_cpp", "batch8_over_batch1",
                "raw_batch8_over_batch1", "cache_hit_ttft_over_miss", "spec_speedup", "http_ttft_over_raw", "raw_over_onnxruntime_genai",
                "small_http_over_raw", "small_overhead_ms_per_token", *bigvocab.RATIOS,
                *vllm_peer.RATIOS):
        v = out.get(key)
        status = out["thresholds"].get(key, {}).get("status", "")
        pair = out["paired_ratios"].get(key)
        spread = f"  ({pair['n']} side-by-side rounds: {pair['min']:.3f}–{pair['max']:.3f})" if pair else ""
        print(f"  {key:36s} {'n/a' if v is None else f'{v:.3f}':>8s}  {status}{spread}")
    if out["token_match_vs_raw"]:
        print("  greedy tokens equal to the raw loop's (same precision): " + ", ".join(
            f"{k} {v:.0%}" for k, v in out["token_match_vs_raw"].items() if not k.endswith("_divergence")))
        print("  first differing position (None: identical): " + ", ".join(
            f"{k.removesuffix('_first_divergence')} {v}" for k, v in out["token_match_vs_raw"].items()
            if k.endswith("_divergence")))
    for note in out["notes"]:
        print(f"  note: {note}")
