"""vLLM (CPU build) as a peer: `python -m bench --with-vllm VENV` adds row (11).

vLLM's OpenAI server runs from the virtual environment VENV (tools/peers/vllm.sh installs
one) on the bench model's HF checkpoint, the same weights refserver runs as ONNX, with the
settings vLLM recommends on CPU: Intel OpenMP and tcmalloc preloaded when found, its OpenMP
threads bound to `--threads` cores.  Both servers stay up and take turns, round by round:
one stream on each (the same prompt), then 8 concurrent streams on each; the ratios
`over_vllm` and `batch8_over_vllm` are medians of the per-round ratios.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .client import completion_body, concurrent_streams, stream_completion
from .server import Server
from .stats import Stat, paired_rows

THRESHOLDS = {"over_vllm": (1.0, 1.5, "ge"), "batch8_over_vllm": (1.0, 1.3, "ge")}
RATIOS = {"over_vllm": ("vllm_refserver", "vllm"), "batch8_over_vllm": ("vllm_refserver_b8", "vllm_b8"),
          "vllm_ttft_over_refserver": ("vllm_ttft", "vllm_refserver_ttft")}
OPENAI = "/v1/completions"
NAME = "bench"  # --served-model-name


class VllmServer(Server):
    """`VENV/bin/python -m vllm.entrypoints.openai.api_server` on an HF checkpoint."""

    def __init__(self, venv: Path, hf_dir: Path, threads: int):
        super().__init__(hf_dir, [], python=str(venv / "bin" / "python"), startup_timeout=900.0)
        self.venv, self.threads = venv, threads

    def command(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", "float32", "--max-model-len", "2048"]

    def extra_env(self) -> dict[str, str]:
        preload = [str(p) for p in (self.venv / "lib" / "libiomp5.so", *_tcmalloc()) if p.is_file()]
        env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{max(self.threads, 1) - 1}",
               "VLLM_HOST_IP": "127.0.0.1"}
        if preload:
            env["LD_PRELOAD"] = ":".join(preload)
        return env


def _tcmalloc() -> list[Path]:
    found = sorted(Path("/usr/lib").glob("*/libtcmalloc_minimal.so.4")) + sorted(Path("/usr/lib").glob("*/libtcmalloc.so.4"))
    return found[:1]


def usable(venv: Path) -> str | None:
    """Why vLLM cannot run from `venv` (None: it can)."""
    py = venv / "bin" / "python"
    if not py.is_file():
        return f"no interpreter at {py}"
    done = subprocess.run([str(py), "-c", "import vllm"], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"{py} cannot import vllm: {done.stderr.strip()[-300:]}"


def openai_body(prompt: list[int], n: int) -> dict:
    return {"model": NAME, "prompt": prompt, "max_tokens": n, "min_tokens": n, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}


def vllm_rows(bench, venv: Path, onnx: Path, hf_dir: Path) -> None:
    """Row (11): refserver and vLLM side by side, 1 and 8 streams per round."""
    m = bench.mode
    label = "(11) vLLM CPU (OpenAI server, fp32, same weights)"
    why = usable(venv)
    if why:
        bench.skip("vllm", label, why)
        return
    bench.say(f"{label}: starting vLLM from {venv} (start-up takes minutes on 2 cores) ...")
    vals: dict[str, list] = {k: [] for k in ("vllm", "vllm_refserver", "vllm_b8", "vllm_refserver_b8",
                                             "vllm_ttft", "vllm_refserver_ttft")}
    with VllmServer(venv, hf_dir, bench.threads) as vs, Server(onnx, bench.server_args(8, 8 * m.slot_ctx)) as srv:
        runners = {"vllm": (vs.port, OPENAI, openai_body), "vllm_refserver": (srv.port, "/completion", completion_body)}
        for port, path, body in runners.values():  # warm-up
            concurrent_streams(port, [body(bench.prompts[-1 - i], 8) for i in range(8)], path=path)
        for r in range(m.repeats):
            for key, (port, path, body) in runners.items():
                res = bench._check(stream_completion(port, body(bench.prompts[r], m.n_new), path=path))
                vals[key].append(res.decode_tok_s)
                vals[key + "_ttft"].append(res.ttft_ms)
            for key, (port, path, body) in runners.items():
                prompts = [bench._fresh_prompt(m.prompt_len) for _ in range(8)]
                results, agg = concurrent_streams(port, [body(p, m.n_new) for p in prompts], path=path)
                for res in results:
                    bench._check(res)
                vals[key + "_b8"].append(agg)
            bench.say(f"    round {r + 1}/{m.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in vals.items()))
    for key, v in vals.items():
        unit = "ms" if key.endswith("ttft") else "tok/s"
        bench.record(key, f"(11) {key.replace('_', ' ')}", Stat.of(v), unit, values=v)


def ratios(rows: dict) -> tuple[dict, dict]:
    return paired_rows(rows, RATIOS)
