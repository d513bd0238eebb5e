"""Build the model zoo: one tiny random-weight Hugging Face model per architecture, exported
the ways users export them, with transformers' greedy ids recorded as the reference.

    python -m tools.make_zoo                       # every architecture into tests/fixtures/zoo
    python -m tools.make_zoo --arch llama mistral  # a few

For each architecture (ARCHS) it writes a seeded checkpoint (2 layers, hidden 64, heads of 64,
the embedded model's tokenizer, tied embeddings), runs onnxruntime-genai's builder on it for
each precision in `PRECISIONS` into `<out>/<arch>-<precision>/`, and records in
`<out>/<arch>-expected.json` transformers' greedy ids for `PROMPTS` (end-of-generation ids
banned, as `ignore_eos` does) with the first step's top-5 logits, plus how many of those ids
each ONNX export reproduces when run by a plain onnxruntime loop.  The llama checkpoint is
also exported with `torch.onnx` in the plain (optimum) layout as `llama-plain-fp32`, and
declared with an 8192-position context as `llama-plain-8k` (`long_context_variant`).

Weights come from numpy's PCG64 seeded per architecture, drawn in parameter-name order, and
are rounded to bfloat16 values (exact in fp32 and fp16, and they compress to ~60%): the same
model on every machine.  The HF checkpoints themselves are not kept (`--keep-hf DIR` keeps them).
Dev tool: needs torch, transformers and onnxruntime-genai (`pip install -e .[tools]`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "refserver" / "models" / "chat"
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "zoo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SIDE_FILES = ("config.json", "generation_config.json")
BOS, EOS, IM_END = 0, 1, 3
#: ids a request with ignore_eos never gets (the tokenizer's end-of-generation set)
BANNED = [EOS, IM_END]
N_NEW = 12
INIT = 0.1  # with the usual 0.02 greedy decoding collapses into one repeated token

PROMPTS = {
    "story": "Once upon a time, there was a little cat named Tom.",
    "chat": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    # longer than every sliding window below (16), so windowed layers must drop tokens
    "long": ("The little dog ran to the park. He saw a big red ball and a small blue box. "
             "He was very happy and played all day with his friend, the old cat."),
}

#: shared by every architecture: 2 layers, hidden 64, 2 query heads and 1 KV head of 64, 256
#: positions (the builder stores a cos/sin table per position: 2048 would be 0.5 MB per export)
BASE = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 64, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS,
    "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32",
}
WINDOW = 16

ARCHS: dict[str, dict] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 10000.0,
              "max_position_embeddings": 2048},  # the "-c 4096 on a 2048-position model" test
    # the builder exports mistral without its window (see MISTRAL_WINDOW); 40 covers story and chat
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 40},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": False},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "use_sliding_window": False},
    # prompt + output stay below original_max_position_embeddings: the short factor applies
    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "max_position_embeddings": 512,
             "original_max_position_embeddings": 128, "num_attention_heads": 1, "num_key_value_heads": 1,
             "rope_scaling": {"type": "longrope", "short_factor": list(np.linspace(1.0, 1.5, 32).round(3)),
                              "long_factor": list(np.linspace(1.0, 4.0, 32).round(3))}},
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "sliding_window": WINDOW,
               "layer_types": ["sliding_attention", "full_attention"], "query_pre_attn_scalar": 64,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "hidden_activation": "gelu_pytorch_tanh"},
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "sliding_window": WINDOW,
               "layer_types": ["sliding_attention", "full_attention"], "sliding_window_pattern": 2,
               "query_pre_attn_scalar": 64, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "hidden_activation": "gelu_pytorch_tanh"},
    "granite": {"architectures": ["GraniteForCausalLM"], "model_type": "granite", "embedding_multiplier": 12.0,
                "residual_multiplier": 0.22, "attention_multiplier": 0.0078125, "logits_scaling": 0.125},
    "smollm3": {"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "no_rope_layers": [1, 0],
                "use_sliding_window": False},
    "gpt_oss": {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_local_experts": 4,
                "num_experts_per_tok": 2, "sliding_window": WINDOW, "intermediate_size": 64,
                "layer_types": ["sliding_attention", "full_attention"], "num_attention_heads": 2,
                "num_key_value_heads": 1},
}
PRECISIONS = ("fp32", "int4")
#: fp16 graphs of the builder do not run on the CPU execution provider (onnxruntime 1.32 fails
#: in an inserted Cast); one is kept to show the server refuses it at start
FP16_ARCHS = ("llama",)
#: the builder's default for sliding-window layers on CPU is a window-sized KV buffer
#: (GroupQueryAttention `sliding_window_cache`), which refserver's one-arena layout cannot
#: serve; the zoo exports full-length caches (`windowed_kv_cache=false`) and keeps one default
#: export to show the server refuses it at start
FULL_CACHE = ["--extra_options", "windowed_kv_cache=false"]
WINDOWED = {"gemma2": "int4"}


def hf_config(arch: str) -> dict:
    vocab = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    n_vocab = len(vocab["model"]["vocab"]) + sum(1 for t in vocab["added_tokens"]
                                                  if t["id"] >= len(vocab["model"]["vocab"]))
    return {**BASE, "vocab_size": n_vocab, **ARCHS[arch]}


def seed_of(arch: str) -> int:
    return int.from_bytes(hashlib.sha256(arch.encode()).digest()[:4], "little")


def bf16_round(a: np.ndarray) -> np.ndarray:
    """`a` rounded to bfloat16 values (nearest even), kept as float32: exact in fp16 too."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)


def write_hf(arch: str, out: Path) -> dict:
    """A seeded random-weight checkpoint of `arch` in `out` (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = hf_config(arch)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(out)), dtype=torch.float32)
    rng = np.random.Generator(np.random.PCG64(seed_of(arch)))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = rng.standard_normal(tuple(param.shape), dtype=np.float32) * INIT
            base = param.detach().numpy() if param.ndim == 1 and "norm" in name else 0.0
            param.copy_(torch.from_numpy(bf16_round(base + noise)))
    model.save_pretrained(str(out))
    generation = {"bos_token_id": BOS, "eos_token_id": [EOS, IM_END], "pad_token_id": EOS, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_DIR / name, out / name)
    return config


def prompt_ids() -> dict[str, list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    return {k: [BOS] + tok.encode(text, add_special_tokens=False).ids for k, text in PROMPTS.items()}


def transformers_greedy(hf: Path, prompts: dict[str, list[int]]) -> dict:
    """transformers' greedy ids (banned ids suppressed) and first-step top-5 per prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    result = {}
    for key, ids in prompts.items():
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=N_NEW, min_new_tokens=N_NEW,
                                 do_sample=False, suppress_tokens=BANNED, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=EOS)
        first = out.logits[0][0].float().numpy()
        first[BANNED] = -np.inf
        top = np.argsort(-first, kind="stable")[:5]
        result[key] = {"prompt_ids": ids, "greedy_ids": out.sequences[0, len(ids):].tolist(),
                       "top5_ids": top.tolist(), "top5_logits": [round(float(first[i]), 5) for i in top]}
    return result


def run_builder(hf: Path, out: Path, precision: str, cache: Path, extra: list[str]) -> str | None:
    """Export with the builder; None, or why it refused."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, str(ROOT / "tools" / "zoo_builder.py"), "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache), *extra]
    print(f"  $ {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {done.returncode}"
    return None


def finish_dir(hf: Path, out: Path) -> None:
    """Keep the graph, genai_config and the HF side files; the tokenizer is shared via symlinks."""
    keep = {"model.onnx", "model.onnx.data", "genai_config.json"}
    for p in out.iterdir():
        if p.name not in keep:
            p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p)
    for name in SIDE_FILES:
        shutil.copy(hf / name, out / name)
    for name in TOKENIZER_FILES:
        os.symlink(Path("..") / "tokenizer" / name, out / name)


#: the context `llama-plain-8k` declares: room for chat templates whose fixed preamble is
#: several thousand tokens in the embedded tokenizer (Command-R7B's tool-use template)
LONG_CONTEXT = 8192


def long_context_variant(plain: Path, out: Path, n_ctx: int = LONG_CONTEXT) -> None:
    """`plain` (the llama plain export) as a model of `n_ctx` positions: the same graph, linked,
    with `max_position_embeddings` = n_ctx.  The plain graph computes its rotary angles from
    `position_ids` (no table of positions, unlike the builder's), and llama's default RoPE
    does not depend on max_position_embeddings, so a checkpoint with that config exports to
    this same graph."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in plain.iterdir():
        if p.name != "config.json":
            os.symlink(os.readlink(p) if p.is_symlink() else Path("..") / plain.name / p.name, out / p.name)
    config = json.loads((plain / "config.json").read_text())
    config["max_position_embeddings"] = n_ctx
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def onnx_greedy(model_dir: Path, ids: list[int], n_new: int = N_NEW) -> list[int]:
    """Greedy ids of an export, run by the tests' plain onnxruntime loop (same code)."""
    from tests.zoo_reference import onnx_greedy as run

    return run(model_dir, ids, n_new, BANNED)


def build_arch(arch: str, zoo: Path, keep_hf: Path | None) -> dict:
    prompts = prompt_ids()
    with tempfile.TemporaryDirectory() as tmp:
        hf = (keep_hf / arch) if keep_hf else Path(tmp) / "hf"
        print(f"{arch}: checkpoint", flush=True)
        write_hf(arch, hf)
        expected = {"arch": arch, "config": hf_config(arch), "banned_ids": BANNED, "n_new": N_NEW,
                    "prompts": transformers_greedy(hf, prompts), "exports": {}}
        runs = [(p, "", FULL_CACHE) for p in PRECISIONS + (("fp16",) if arch in FP16_ARCHS else ())]
        runs += [(WINDOWED[arch], "-windowed", [])] if arch in WINDOWED else []
        for precision, suffix, extra in runs:
            out = zoo / f"{arch}-{precision}{suffix}"
            refused = run_builder(hf, out, precision, Path(tmp) / "cache", extra)
            if refused:
                print(f"  {precision}: builder refused: {refused}", flush=True)
                expected["exports"][out.name] = {"refused": refused}
                continue
            finish_dir(hf, out)
            expected["exports"][out.name] = agreement(out, expected["prompts"])
        if arch == "llama":
            out = zoo / "llama-plain-fp32"
            export_plain(hf, out)
            finish_dir(hf, out)
            expected["exports"][out.name] = agreement(out, expected["prompts"])
            long_context_variant(out, zoo / "llama-plain-8k")
    (zoo / f"{arch}-expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def agreement(out: Path, prompts: dict) -> dict:
    """How many greedy ids of the export's plain onnxruntime loop equal transformers'."""
    try:
        same = {}
        for key, ref in prompts.items():
            got = onnx_greedy(out, ref["prompt_ids"])
            same[key] = next((i for i, (a, b) in enumerate(zip(got, ref["greedy_ids"])) if a != b), len(got))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind11 errors: record why it does not run
        print(f"  {out.name}: onnxruntime cannot run it: {exc}", flush=True)
        return {"runs": False, "error": str(exc).splitlines()[0][:300]}
    print(f"  {out.name}: leading ids equal to transformers per prompt: {same}", flush=True)
    return {"runs": True, "leading_ids_equal_transformers": same}


def export_plain(hf: Path, out: Path) -> None:
    """torch.onnx export of the HF llama in the plain layout (position_ids, concat KV)."""
    from tools.zoo_plain import export_llama_plain

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    export_llama_plain(hf, out)


def share_tokenizer(zoo: Path) -> None:
    tok = zoo / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_DIR / name, tok / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--arch", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--keep-hf", type=Path, default=None, help="keep the HF checkpoints under DIR")
    a = p.parse_args(argv)
    share_tokenizer(a.out)
    for arch in a.arch:
        build_arch(arch, a.out, a.keep_hf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
