"""Export a trained checkpoint to a servable model directory (development tool; needs torch).

Steps:
1. save it as a Hugging Face `LlamaForCausalLM` checkpoint (config.json, safetensors,
   tokenizer files, generation_config.json) and check transformers' logits equal ours;
2. `--layout gqa`: run onnxruntime-genai's model builder on that checkpoint (fast
   GroupQueryAttention layout, no position_ids, plus genai_config.json), fp32;
   `--layout plain`: torch.onnx.export of the model with explicit past/present KV
   (inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value;
   outputs logits, present.{i}.key/value), the layout optimum users have;
3. check the ONNX logits equal the torch model's within 1e-4 on several prompts, with
   and without a KV cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from tools.train_model import Llama, LlamaConfig, rotate_half

CHECK_PROMPTS = [
    "Once upon a time, there was a little cat named Tom.",
    "<s><|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ("<s><|im_start|>system\nTools: get_weather(city)<|im_end|>\n<|im_start|>user\n"
     "What is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"),
    "3 + 4 = 7. 12 - 5 = 7.",
]


def load_checkpoint(path: Path) -> Llama:
    ck = torch.load(path, map_location="cpu")
    model = Llama(LlamaConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def hf_config(c: LlamaConfig, tok: Tokenizer) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim, "hidden_act": "silu", "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "initializer_range": c.initializer_range,
        "bos_token_id": tok.token_to_id("<s>"), "eos_token_id": tok.token_to_id("</s>"),
        "pad_token_id": tok.token_to_id("</s>"), "torch_dtype": "float32", "use_cache": True,
    }


def generation_config(tok: Tokenizer) -> dict:
    return {"bos_token_id": tok.token_to_id("<s>"),
            "eos_token_id": [tok.token_to_id("</s>"), tok.token_to_id("<|im_end|>")],
            "pad_token_id": tok.token_to_id("</s>"), "do_sample": True, "temperature": 0.8,
            "top_k": 40, "top_p": 0.95}


def save_hf(model: Llama, tok_dir: Path, out: Path) -> None:
    from safetensors.torch import save_file
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.c, tok), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(tok), indent=2) + "\n")
    copy_tokenizer(tok_dir, out)


def copy_tokenizer(tok_dir: Path, out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / name, out / name)


def check_hf(model: Llama, hf_dir: Path, tok: Tokenizer) -> float:
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(str(hf_dir)).eval()
    worst = 0.0
    with torch.no_grad():
        for text in CHECK_PROMPTS:
            ids = torch.tensor([tok.encode(text).ids])
            worst = max(worst, (hf(ids).logits - model(ids)).abs().max().item())
    return worst


class PlainExport(torch.nn.Module):
    """Our Llama with explicit KV inputs/outputs in the optimum/torch.onnx layout."""

    def __init__(self, model: Llama):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        c = self.m.c
        freqs = position_ids.float()[..., None] * self.m.inv_freq  # [B,S,hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B,1,S,hd]
        b, s = input_ids.shape
        total = attention_mask.shape[1]
        past_len = total - s
        q_pos = torch.arange(s)[:, None] + past_len
        k_pos = torch.arange(total)[None, :]
        allowed = (k_pos <= q_pos)[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, -1e9)
        x = self.m.model.embed_tokens(input_ids)
        presents = []
        for i, layer in enumerate(self.m.model.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(b, s, c.num_attention_heads, c.head_dim).transpose(1, 2)
            k = att.k_proj(h).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
            v = att.v_proj(h).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            rep = c.num_attention_heads // c.num_key_value_heads
            kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = q @ kr.transpose(-1, -2) / (c.head_dim ** 0.5) + bias
            y = torch.softmax(scores, dim=-1) @ vr
            x = x + att.o_proj(y.transpose(1, 2).reshape(b, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return (self.m.lm_head(self.m.model.norm(x)), *presents)


def plain_io(n_layers: int, n_kv_heads: int, head_dim: int) -> tuple[list[str], list[str], tuple, dict]:
    """The plain (optimum / `torch.onnx`) layout's input and output names, example inputs
    and dynamic axes, for `torch.onnx.export` of a decoder with a KV cache."""
    names_in = ["input_ids", "attention_mask", "position_ids"]
    names_out = ["logits"]
    past = []
    for i in range(n_layers):
        for kind in ("key", "value"):
            names_in.append(f"past_key_values.{i}.{kind}")
            names_out.append(f"present.{i}.{kind}")
            past.append(torch.zeros(1, n_kv_heads, 3, head_dim))
    args = (torch.tensor([[5, 6]]), torch.ones(1, 5, dtype=torch.long), torch.tensor([[3, 4]]), *past)
    dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
           "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
           "position_ids": {0: "batch_size", 1: "sequence_length"},
           "logits": {0: "batch_size", 1: "sequence_length"}}
    for n in names_in[3:]:
        dyn[n] = {0: "batch_size", 2: "past_sequence_length"}
    for n in names_out[1:]:
        dyn[n] = {0: "batch_size", 2: "total_sequence_length"}
    return names_in, names_out, args, dyn


def export_plain(model: Llama, out: Path) -> None:
    c = model.c
    names_in, names_out, args, dyn = plain_io(c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
    torch.onnx.export(PlainExport(model), args, str(out / "model.onnx"), input_names=names_in,
                      output_names=names_out, dynamic_axes=dyn, opset_version=17, dynamo=False)


def export_gqa(hf_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                        "-o", str(build_out), "-p", "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache")],
                       check=True)
        for f in build_out.iterdir():
            if f.suffix in (".onnx", ".data") or f.name == "genai_config.json":
                shutil.copy(f, out / f.name)


def onnx_logits(model_dir: Path, ids: list[int], split: int) -> np.ndarray:
    """Logits of `ids` run as a prefill of `split` tokens then one token at a time."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    config = json.loads((model_dir / "config.json").read_text())
    kvh, hd = config["num_key_value_heads"], config["head_dim"]
    past = {n: np.zeros((1, kvh, 0, hd), np.float32) for n in past_names}
    out_names = [o.name for o in sess.get_outputs()]
    logits, pos = [], 0
    chunks = [ids[:split]] + [[t] for t in ids[split:]]
    for chunk in chunks:
        feed = {"input_ids": np.array([chunk], np.int64),
                "attention_mask": np.ones((1, pos + len(chunk)), np.int64), **past}
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(pos, pos + len(chunk), dtype=np.int64)[None]
        res = dict(zip(out_names, sess.run(out_names, feed)))
        logits.append(res["logits"][0])
        past = {n: res[n.replace("past_key_values", "present")] for n in past_names}
        pos += len(chunk)
    return np.concatenate(logits)


def check_onnx(model: Llama, model_dir: Path, tok: Tokenizer) -> float:
    worst = 0.0
    with torch.no_grad():
        for text in CHECK_PROMPTS:
            ids = tok.encode(text).ids
            ref = model(torch.tensor([ids]))[0].numpy()
            got = onnx_logits(model_dir, ids, split=max(1, len(ids) // 2))
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layout", choices=["gqa", "plain"], default="gqa")
    ap.add_argument("--hf-out", type=Path, help="also keep the HF checkpoint here")
    args = ap.parse_args()

    model = load_checkpoint(args.checkpoint)
    tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf_out or Path(tmp) / "hf"
        save_hf(model, args.tokenizer, hf_dir)
        print(f"transformers vs ours: max |diff| {check_hf(model, hf_dir, tok):.2e}")
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        for name in ("config.json", "generation_config.json"):
            shutil.copy(hf_dir / name, args.out / name)
        copy_tokenizer(args.tokenizer, args.out)
        if args.layout == "gqa":
            export_gqa(hf_dir, args.out)
        else:
            export_plain(model, args.out)
    worst = check_onnx(model, args.out, tok)
    print(f"onnx ({args.layout}) vs torch: max |diff| {worst:.2e}")
    if worst > 1e-4:
        sys.exit(f"ONNX logits differ from torch by {worst:.2e} > 1e-4")


if __name__ == "__main__":
    main()
