"""The bench's rows on a 151,936-token vocabulary (Qwen's size): `bigvocab_*` keys.

The main bench model has 4,098 tokens, so copying and sampling a logits row costs nothing
next to the model.  Real models have 128k-256k: a row is 600 KB of float32 per stream per
step, and the vocabulary projection is most of a small model's work.  This runs the same
comparisons on `bench-llama-v151936` (tools/make_bench_model.py --preset bigvocab: the
bench model's body and untied head, its tokenizer widened to 151,936 ids), every ratio
side by side, round by round:

* single stream: the raw backend loop, onnxruntime-genai and refserver over HTTP (greedy),
  plus one HTTP request with llama.cpp's default sampling (top_k 40, top_p 0.95, min_p
  0.05, temperature 0.8): what sampling costs per token at this width; HTTP goes first in
  every other round, so a drift within a round does not favour one side;
* batching: refserver with 1 stream then 8 streams, and the raw backend with B = 1 then 8
  (the ceiling) in a fresh process, each round.

Fewer and shorter rounds than the main rows (`BigMode`): the model is 180M parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .client import completion_body, concurrent_streams, stream_completion
from .server import Server
from .stats import Stat, paired_rows

VOCAB = 151936
#: key: (first threshold, goal, "ge" | "le"), as the main THRESHOLDS
THRESHOLDS = {
    "bigvocab_http_over_raw": (0.9, 0.97, "ge"),
    "bigvocab_over_onnxruntime_genai": (0.9, 1.05, "ge"),
    "bigvocab_batch8_over_batch1": (2.5, 3.5, "ge"),
}
#: ratio key: (numerator row, denominator row); each row holds one value per round
RATIOS = {
    "bigvocab_http_over_raw": ("bigvocab_http", "bigvocab_raw"),
    "bigvocab_over_onnxruntime_genai": ("bigvocab_http", "bigvocab_genai"),
    "bigvocab_raw_over_onnxruntime_genai": ("bigvocab_raw", "bigvocab_genai"),
    "bigvocab_sampled_over_greedy": ("bigvocab_http_sampled", "bigvocab_http"),
    "bigvocab_batch8_over_batch1": ("bigvocab_batch8", "bigvocab_batch1"),
    "bigvocab_raw_batch8_over_batch1": ("bigvocab_raw_b8", "bigvocab_raw_b1"),
}
#: llama.cpp's default sampling chain settings (the server's defaults too)
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 7}


@dataclass(frozen=True)
class BigMode:
    rounds: int
    n_new: int
    slot_ctx: int


QUICK = BigMode(rounds=7, n_new=64, slot_ctx=256)
FULL = BigMode(rounds=9, n_new=128, slot_ctx=256)


def build_model() -> Path:
    """The cached `bench-llama-v151936` (built on first use: a few minutes, needs the
    onnxruntime-genai builder and torch in this interpreter)."""
    from tools import make_bench_model

    return make_bench_model.build(make_bench_model.DEFAULT_CACHE, vocab=VOCAB, gguf=False)


class BigVocabRows:
    """Runs the rows on a `Bench` (its prompts, workers, `say` and `record`)."""

    def __init__(self, bench, mode: BigMode):
        self.bench, self.mode = bench, mode

    def run(self) -> None:
        b, m = self.bench, self.mode
        b.say(f"(10) {VOCAB:,}-token vocabulary: building or reusing the model ...")
        root = build_model()
        onnx = root / "onnx-fp32"
        self.onnx, self.ban = onnx, b.ban(onnx)
        b.say(f"    {root.name}; {m.rounds} rounds of {m.n_new} tokens")
        with Server(onnx, b.server_args(8, 8 * m.slot_ctx)) as srv:
            b._check(stream_completion(srv.port, completion_body(b.prompts[-1], 8)))  # warm-up
            self.single_stream(srv)
            self.batching(srv)

    def _spec(self, kind: str, prompts: list, **extra) -> dict:
        b, m = self.bench, self.mode
        return {"kind": kind, "model": str(self.onnx), "prompts": prompts, "n_new": m.n_new,
                "threads": b.threads, "ctx": m.slot_ctx, "ban": self.ban, **extra}

    def _http(self, srv: Server, prompt: list, **extra) -> object:
        return self.bench._check(stream_completion(srv.port, completion_body(prompt, self.mode.n_new, **extra)))

    def single_stream(self, srv: Server) -> None:
        b, m = self.bench, self.mode
        b.say("    single stream: raw loop, onnxruntime-genai, refserver HTTP (greedy, then sampled) ...")
        vals: dict[str, list] = {k: [] for k in ("raw", "genai", "http", "http_sampled")}
        ttft: dict[str, list] = {k: [] for k in vals}
        for r in range(m.rounds):
            prompt = b.prompts[r]
            for part in (("raw", "genai", "http"), ("http", "raw", "genai"))[r % 2]:  # drift cancels over rounds
                if part == "http":
                    for key, extra in (("http", {}), ("http_sampled", SAMPLED)):
                        b._warm_up(srv)
                        res = self._http(srv, prompt, **extra)
                        vals[key].append(res.decode_tok_s)
                        ttft[key].append(res.ttft_ms)
                else:
                    run = b._run_worker(self._spec(part, [prompt]))["runs"][0]
                    vals[part].append(run["decode_tok_s"])
                    ttft[part].append(run["ttft_ms"])
            b.say(f"    round {r + 1}/{m.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in vals.items())
                  + " tok/s")
        labels = {"raw": "raw backend loop", "genai": "onnxruntime-genai Generator",
                  "http": "refserver HTTP, 1 stream, greedy", "http_sampled": "refserver HTTP, 1 stream, sampled"}
        for key, label in labels.items():
            b.record(f"bigvocab_{key}", f"(10) {VOCAB:,} vocab: {label} (fp32)", Stat.of(vals[key]), "tok/s",
                     values=vals[key], ttft_ms=Stat.of(ttft[key]).as_dict())

    def batching(self, srv: Server) -> None:
        b, m = self.bench, self.mode
        b.say("    batching: refserver 1 then 8 streams, raw backend B=1 then 8, each round ...")
        vals: dict[str, list] = {k: [] for k in ("batch1", "batch8", "raw_b1", "raw_b8")}
        concurrent_streams(srv.port, [completion_body(b._fresh_prompt(b.mode.prompt_len), 8) for _ in range(8)])
        for r in range(m.rounds):
            for n in (1, 8):
                bodies = [completion_body(b._fresh_prompt(b.mode.prompt_len), m.n_new) for _ in range(n)]
                results, agg = concurrent_streams(srv.port, bodies)
                for res in results:
                    b._check(res)
                vals[f"batch{n}"].append(agg)
            levels = b._run_worker(self._spec("raw_batch", b.prompts[:8], batches=[1, 8]))["levels"]
            vals["raw_b1"].append(levels["1"])
            vals["raw_b8"].append(levels["8"])
            b.say(f"    round {r + 1}/{m.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in vals.items())
                  + " tok/s aggregate")
        for key, v in vals.items():
            b.record(f"bigvocab_{key}", f"(10) {VOCAB:,} vocab: {key} aggregate", Stat.of(v), "tok/s", values=v)


def ratios(rows: dict) -> tuple[dict, dict]:
    return paired_rows(rows, RATIOS)
