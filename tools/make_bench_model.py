"""Make the benchmark model: a seeded random-weight Llama, exported three ways.

    python -m tools.make_bench_model                 # into bench/.cache/ (skipped when up to date)
    python -m tools.make_bench_model --force --check
    python -m tools.make_bench_model --preset bigvocab   # the 151,936-token vocabulary (Qwen's size)

Writes, under the cache directory (default `bench/.cache/`):

* `bench-llama/hf/`        Hugging Face `LlamaForCausalLM` checkpoint (safetensors, config,
                           the project's tokenizer from `refserver/models/chat`);
* `bench-llama/onnx-fp32/` and `onnx-int4/`: onnxruntime-genai's model builder output
                           (GroupQueryAttention layout, `genai_config.json`) plus the HF side
                           files refserver reads;
* `bench-llama/gguf/bench-llama-f32.gguf`: the same weights for llama.cpp (tools/export_gguf.py).

`--vocab N` (or `--preset bigvocab`, N = 151,936) makes `bench-llama-vN/` instead: the same
body and untied head, with the project's tokenizer widened to N tokens (`widen_tokenizer`:
extra BPE vocabulary entries that no merge produces, so prompts tokenize exactly as before and
every generated id still decodes to text).  No GGUF is made for it unless asked (`--gguf`).

The weights come from numpy's PCG64 seeded with `--seed`, drawn in a fixed tensor order,
so the model is the same on every machine and transformers version.  Linear and embedding
weights are N(0, initializer_range²) with initializer_range 0.1 (with the usual 0.02 greedy
decoding collapses into one repeated token, so cross-engine comparisons would say little);
norm weights are 1.

`--check` compares transformers' greedy continuation (torch) with the ONNX model's
(ONNX Runtime through refserver's backend) on a fixed prompt.  This is a dev tool: torch is
needed for the builder and `--check`, never by the server or the benchmark.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "refserver" / "models" / "chat"
DEFAULT_CACHE = ROOT / "bench" / ".cache"
NAME = "bench-llama"

#: the shape: 8 layers of width 512, GQA 8/4 heads of 64, vocab of the project's tokenizer
SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}
INIT_RANGE = 0.1
SEED = 1234
CHECK_PROMPT = "Once upon a time, there was a little cat named Tom. 12 + 30 = 42."


def hf_config(vocab_size: int, bos: int, eos: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        **SHAPE, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "initializer_range": INIT_RANGE, "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": eos, "torch_dtype": "float32", "use_cache": True,
    }


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes, in the fixed order the weights are drawn in."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return shapes


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    weights = {}
    for name, shape in tensor_shapes(config):
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, np.float32)
        else:
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * INIT_RANGE).astype(np.float32)
    return weights


#: named vocabulary sizes (`--preset`); None: the project's tokenizer as it is
PRESETS = {"small": None, "bigvocab": 151936}
#: what a widened tokenizer depends on besides its size (part of the recipe hash)
WIDE_RECIPE = {"method": "pair-concat", "seed": 151936}


def recipe_hash(seed: int, vocab: int | None = None) -> str:
    """What the cached files depend on; a change rebuilds them."""
    tok = (TOKENIZER_DIR / "tokenizer.json").read_bytes()
    recipe = {"shape": SHAPE, "init": INIT_RANGE, "seed": seed, "v": 2}
    if vocab is not None:
        recipe.update(vocab=vocab, wide=WIDE_RECIPE)
    return hashlib.sha256(json.dumps(recipe).encode() + tok).hexdigest()[:16]


def widen_tokenizer(tok: dict, size: int) -> dict:
    """A copy of the tokenizer.json dict `tok` with `size` ids in all (vocab + added tokens).

    A 150k-merge BPE needs far more text than the project has, so the extra ids are
    vocabulary entries that no merge produces, each the concatenation of two existing
    (non-special) tokens picked by a seeded generator: prompts encode exactly as before,
    and every id the model may generate decodes to real byte-level text, so streaming,
    detokenization and stop strings do the work they do with a real large vocabulary."""
    out = copy.deepcopy(tok)
    vocab: dict[str, int] = out["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in out["added_tokens"]}
    if size < max(taken) + 1:
        raise SystemExit(f"--vocab {size} is smaller than the tokenizer's {max(taken) + 1} ids")
    special = {t["content"] for t in out["added_tokens"]}
    pieces = sorted(p for p in vocab if p not in special)
    free = (i for i in range(size) if i not in taken)
    rng = np.random.Generator(np.random.PCG64(WIDE_RECIPE["seed"]))
    want = size - len(taken)
    while want:
        pairs = rng.integers(0, len(pieces), size=(2 * want, 2))
        for a, b in pairs.tolist():
            piece = pieces[a] + pieces[b]
            if piece not in vocab:
                vocab[piece] = next(free)
                want -= 1
                if not want:
                    break
    return out


def model_name(vocab: int | None) -> str:
    return NAME if vocab is None else f"{NAME}-v{vocab}"


def write_hf(out: Path, seed: int, vocab: int | None = None) -> dict:
    from safetensors.numpy import save_file

    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    if vocab is not None:
        tok = widen_tokenizer(tok, vocab)
    vocab_size = 1 + max(*tok["model"]["vocab"].values(), *(t["id"] for t in tok["added_tokens"]))
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    config = hf_config(vocab_size, special["<s>"], special["</s>"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(random_weights(config, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": [config["eos_token_id"]],
                  "pad_token_id": config["pad_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    copy_side_files(TOKENIZER_DIR, out, ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"))
    if vocab is not None:
        (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    return config


def copy_side_files(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def run_builder(hf: Path, out: Path, precision: str, cache: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    print(f"  $ {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"make_bench_model: the builder failed ({precision}, exit {done.returncode})")
    # refserver reads the HF side files; keep the exact tokenizer the checkpoint has
    copy_side_files(hf, out, ("config.json", "generation_config.json", "tokenizer.json",
                              "tokenizer_config.json", "special_tokens_map.json"))


def check(hf: Path, onnx_dir: Path, gguf: Path | None, n_new: int = 48) -> None:
    """transformers' greedy tokens against ONNX Runtime's (and llama.cpp's, if importable)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    import backends
    from backends import Step

    ids = [0] + Tokenizer.from_file(str(hf / "tokenizer.json")).encode(CHECK_PROMPT).ids
    model = LlamaForCausalLM.from_pretrained(str(hf)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False,
                             min_new_tokens=n_new, pad_token_id=1)
    want = out[0, len(ids):].tolist()
    backend = backends.load(onnx_dir, "cpu", threads=2)
    backend.allocate(1, 256)
    logits = backend.forward([Step(0, 0, ids)])[0]
    got = []
    for _ in range(n_new):
        logits[0, 1] = -np.inf  # no EOS, as min_new_tokens
        got.append(int(logits[-1].argmax()))
        logits = backend.forward([Step(0, len(ids) + len(got) - 1, [got[-1]])])[0]
    same = sum(a == b for a, b in zip(want, got))
    print(f"  check: torch vs ONNX fp32 greedy: {same}/{n_new} tokens equal; "
          f"{len(set(want))} distinct tokens in torch's output")
    if gguf is not None:
        try:
            import llama_cpp
        except ImportError:
            print("  check: llama_cpp not importable here (try the bench's llama venv); GGUF not checked")
            return
        llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=2, verbose=False)
        llm.eval(ids)
        lgot = []
        for _ in range(n_new):
            ptr = llama_cpp.llama_get_logits(llm.ctx)  # the last token's logits
            row = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()
            row[1] = -np.inf
            lgot.append(int(row.argmax()))
            llm.eval([lgot[-1]])
        same = sum(a == b for a, b in zip(want, lgot))
        print(f"  check: torch vs llama.cpp greedy: {same}/{n_new} tokens equal")


def build(cache_dir: Path, seed: int = SEED, force: bool = False, gguf: bool = True,
          vocab: int | None = None) -> Path:
    """Build (or reuse) the model; returns `cache_dir/bench-llama` (`bench-llama-vN` with
    `vocab`).  The GGUF is made when missing and the `gguf` package is importable (it is only
    needed for llama.cpp)."""
    root = cache_dir / model_name(vocab)
    stamp = root / "STAMP"
    want = recipe_hash(seed, vocab)
    hf = root / "hf"
    if force or not stamp.is_file() or stamp.read_text().strip() != want:
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        print(f"making {root} (seed {seed}) ...", flush=True)
        config = write_hf(hf, seed, vocab)
        n_params = sum(int(np.prod(s)) for _, s in tensor_shapes(config))
        print(f"  HF checkpoint: {n_params / 1e6:.1f}M parameters", flush=True)
        builder_cache = root / "builder-cache"
        for precision in ("fp32", "int4"):
            run_builder(hf, root / f"onnx-{precision}", precision, builder_cache)
        shutil.rmtree(builder_cache, ignore_errors=True)
        stamp.write_text(want + "\n")
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    out = gguf_path(root)
    if gguf and not out.is_file():
        if importlib.util.find_spec("gguf") is None:
            print("  no GGUF: the gguf package is not installed (pip install gguf)", flush=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(ROOT / "tools" / "export_gguf.py"), str(hf), str(out)]
            print(f"  $ {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
    return root


def gguf_path(root: Path) -> Path:
    return root / "gguf" / f"{root.name}-f32.gguf"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is up to date")
    p.add_argument("--no-gguf", action="store_true", help="skip the GGUF file")
    p.add_argument("--gguf", action="store_true", help="make the GGUF file for a --vocab model too")
    p.add_argument("--vocab", type=int, default=None,
                   help="widen the tokenizer (and the model) to this many tokens")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named vocabulary size: bigvocab = 151,936 (Qwen's)")
    p.add_argument("--check", action="store_true", help="compare torch, ONNX (and llama.cpp) greedy tokens")
    a = p.parse_args(argv)
    vocab = PRESETS[a.preset] if a.preset else a.vocab
    make_gguf = not a.no_gguf and (vocab is None or a.gguf)
    root = build(a.cache_dir, a.seed, a.force, gguf=make_gguf, vocab=vocab)
    print(root)
    if a.check:
        gguf = gguf_path(root)
        check(root / "hf", root / "onnx-fp32", gguf if gguf.is_file() else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
