"""In-process greedy loops, one engine per process: `python -m bench.workers SPEC_JSON`.

SPEC: {"kind": "raw"|"genai"|"llama", "model": path, "prompts": [[ids], ...],
"n_new": int, "threads": int, "ctx": int, "ban": [ids]}.  Every prompt is run once
after a warm-up on the first one; each run reports its time to first token (prompt
evaluation plus the first greedy pick), its decode speed ((n_new - 1) tokens over the time
after the first token) and its tokens.  The last stdout line is the JSON result.

Each loop does the least any server must: one model step per token and an argmax, with
the ids in `ban` (end-of-generation tokens) masked as `ignore_eos` does.

* raw:   refserver's own backend (`backends.load`), `forward` on one row: the floor that
         refserver's overhead is measured against;
* genai: onnxruntime-genai's `Generator` on the same ONNX directory, intra-op threads set
         explicitly (its default runs at one-thread speed), the banned ids held off with
         min_length (they are given to it as its eos_token_id);
* llama: llama-cpp-python's low-level `eval` on the GGUF of the same weights (runs in the
         interpreter that has llama_cpp, possibly another venv: imports only numpy).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

perf = time.perf_counter


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _run_result(t0: float, t_first: float, t_end: float, tokens: list[int]) -> dict:
    n = len(tokens)
    return {"ttft_ms": (t_first - t0) * 1e3,
            "decode_tok_s": (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else float("nan"),
            "tokens": tokens}


# ---------------------------------------------------------------------------- raw backend
def raw(spec: dict) -> dict:
    import backends
    from backends import Step

    backend = backends.load(spec["model"], "cpu", threads=spec["threads"])
    backend.allocate(1, spec["ctx"])
    ban = spec.get("ban", [])
    load_rss = rss_mib()

    def once(prompt: list[int], n_new: int) -> dict:
        t0 = perf()
        logits = backend.forward([Step(0, 0, prompt)])[0]
        tokens = []
        t_first = 0.0
        for i in range(n_new):
            row = logits[-1]
            row[ban] = -np.inf
            tokens.append(int(row.argmax()))
            if i == 0:
                t_first = perf()
            if i + 1 < n_new:
                logits = backend.forward([Step(0, len(prompt) + i, [tokens[-1]])])[0]
        return _run_result(t0, t_first, perf(), tokens)

    return _loop(spec, once, load_rss)


def raw_batch(spec: dict) -> dict:
    """The backend's batched decode alone: B rows stepping in one `forward` per token, for
    each B in spec["batches"]; the ceiling for refserver's aggregate rate at B streams."""
    import backends
    from backends import Step

    batches, prompts, n_new = spec["batches"], spec["prompts"], spec["n_new"]
    backend = backends.load(spec["model"], "cpu", threads=spec["threads"])
    backend.allocate(max(batches), spec["ctx"])
    ban = spec.get("ban", [])
    levels = {}
    for b in [batches[0]] + batches:  # the first pass warms up
        last = []
        for r in range(b):
            prompt = prompts[r % len(prompts)]
            last.append(backend.forward([Step(r, 0, prompt)])[0][-1])
        pos = [len(prompts[r % len(prompts)]) for r in range(b)]
        t0 = perf()
        for _ in range(n_new - 1):
            steps = []
            for r in range(b):
                row = last[r]
                row[ban] = -np.inf
                steps.append(Step(r, pos[r], [int(row.argmax())]))
                pos[r] += 1
            last = [lg[-1] for lg in backend.forward(steps)]
        levels[str(b)] = b * (n_new - 1) / (perf() - t0)
    return {"levels": levels}


# ---------------------------------------------------------------------------- onnxruntime-genai
def genai(spec: dict) -> dict:
    import onnxruntime_genai as og

    config = og.Config(spec["model"])
    # min_length holds off the ids listed as eos_token_id: list the whole banned set
    config.overlay(json.dumps({"model": {"eos_token_id": spec.get("ban") or [1], "decoder": {"session_options": {
        "intra_op_num_threads": spec["threads"]}}}}))
    model = og.Model(config)
    load_rss = rss_mib()

    def once(prompt: list[int], n_new: int) -> dict:
        params = og.GeneratorParams(model)
        total = len(prompt) + n_new
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        t0 = perf()
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        tokens = []
        t_first = 0.0
        for i in range(n_new):
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            if i == 0:
                t_first = perf()
        t_end = perf()
        del gen
        return _run_result(t0, t_first, t_end, tokens)

    return _loop(spec, once, load_rss)


# ---------------------------------------------------------------------------- llama.cpp
def llama(spec: dict) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(spec["model"], n_ctx=spec["ctx"], n_batch=512, n_threads=spec["threads"],
                n_threads_batch=spec["threads"], verbose=False, logits_all=False)
    ban = spec.get("ban", [])
    load_rss = rss_mib()
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # the one output row eval() asks for (the last token); a view, no copy
        ptr = llama_cpp.llama_get_logits(llm.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def once(prompt: list[int], n_new: int) -> dict:
        llm.reset()
        t0 = perf()
        llm.eval(prompt)
        tokens = []
        t_first = 0.0
        for i in range(n_new):
            row = last_logits()
            row[ban] = -np.inf
            tokens.append(int(row.argmax()))
            if i == 0:
                t_first = perf()
            if i + 1 < n_new:
                llm.eval([tokens[-1]])
        return _run_result(t0, t_first, perf(), tokens)

    out = _loop(spec, once, load_rss)
    out["version"] = getattr(llama_cpp, "__version__", "?")
    return out


# ---------------------------------------------------------------------------- driver
def _loop(spec: dict, once, load_rss: float) -> dict:
    prompts, n_new = spec["prompts"], spec["n_new"]
    once(prompts[0], min(n_new, 16))  # warm-up: first-call allocations, thread pools
    cpu0 = time.process_time()
    runs = [once(p, n_new) for p in prompts]
    cpu = time.process_time() - cpu0
    return {"runs": runs, "rss_mib_loaded": load_rss, "rss_mib_end": rss_mib(),
            "cpu_ms_per_token": cpu * 1e3 / max(1, sum(len(r["tokens"]) for r in runs))}


KINDS = {"raw": raw, "raw_batch": raw_batch, "genai": genai, "llama": llama}


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = KINDS[spec["kind"]](spec)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
