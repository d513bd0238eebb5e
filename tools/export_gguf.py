"""Write a GGUF file (llama.cpp's format) of a Llama model: a Hugging Face checkpoint or
one of refserver's ONNX model directories (the embedded model included).

    python tools/export_gguf.py bench/.cache/bench-llama/hf out.gguf [--outtype f32|f16]
    python tools/export_gguf.py refserver/models/chat chat-f32.gguf

SRC is a directory with config.json and tokenizer.json plus either *.safetensors (HF) or
model.onnx (+ .data): the onnxruntime-genai builder layout (fused `qkv_proj` MatMul
weights stored [in, out]) or a plain export that keeps HF parameter names.  fp32 ONNX
only (int4 MatMulNBits cannot be turned back into floats exactly).

Metadata (architecture "llama": sizes, heads, RoPE base, RMS eps), every tensor under
llama.cpp's names, and the tokenizer.  Needs numpy, the `gguf` package and safetensors
(HF) or onnx (ONNX); no torch.

Two details decide whether llama.cpp computes the same function as transformers:

* RoPE pairing.  HF's Llama rotates dimension i with i + head_dim/2 ("rotate_half");
  llama.cpp's llama architecture rotates adjacent pairs (2i, 2i+1).  So the rows of each
  head of q_proj and k_proj are reordered: within a head, rows [0..d/2) and [d/2..d) are
  interleaved.  Attention scores are unchanged because q and k get the same reordering.
* Tokenizer.  Our tokenizers are byte-level BPE, "gpt2" in GGUF terms: the token list is the
  byte-level strings of tokenizer.json, merges are "left right" strings, special added
  tokens are CONTROL and the others USER_DEFINED.  llama.cpp has no pre-tokenizer identical
  to ours (Split(" ", isolated) + Digits(individual) + ByteLevel's GPT-2 regex), so
  `tokenizer.ggml.pre` is "gpt-2" (that regex alone).  Its pieces are coarser: " the"
  and "123" stay one piece where ours split them.  But BPE never learned a merge across
  a boundary our pre-tokenizer always cuts (no merge joins a space or two digits), so BPE
  over a coarser piece gives the same tokens as over its finer pieces; ids differ only
  where the GPT-2 regex cuts where ours does not (e.g. "'" + "s" after a space: ours
  keeps "'s").  llama.cpp's "default" pre-tokenizer is worse: it first splits off
  punctuation runs ("don't" -> don ' t, ours don 't).  Compare engines token for token
  by feeding token ids, not text.
* End of turn.  generation_config's extra eos ids (our `<|im_end|>`) are written as
  `tokenizer.ggml.eot_token_id`, so llama.cpp stops a chat turn where refserver does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def rope_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head reordered from rotate-half order to adjacent-pair order."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return (w.reshape(n_heads, 2, head_dim // 2, cols)
             .transpose(0, 2, 1, 3)
             .reshape(rows, cols))


def load_tensors(hf: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for path in sorted(hf.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    if not tensors:
        raise SystemExit(f"export_gguf: no *.safetensors in {hf}")
    return tensors


def load_onnx_tensors(src: Path, config: dict) -> dict[str, np.ndarray]:
    """Weights of an fp32 ONNX Llama under HF names ([out, in] matrices)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src / "model.onnx"), load_external_data=False)
    onnx.load_external_data_for_model(model, str(src))
    raw = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if any(n.op_type == "MatMulNBits" for n in model.graph.node):
        raise SystemExit("export_gguf: quantized (MatMulNBits) ONNX models are not supported; export fp32")
    if "model.layers.0.self_attn.q_proj.weight" in raw:  # a plain export keeps HF names
        return {k: v for k, v in raw.items() if k.startswith(("model.", "lm_head."))}
    n_layers = config["num_hidden_layers"]
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads

    def matmul(name: str) -> np.ndarray:  # MatMul weights are [in, out]
        return np.ascontiguousarray(raw[name].T)

    out = {"model.embed_tokens.weight": raw["model.embed_tokens.weight"]}
    for i in range(n_layers):
        o, h = f"model.layers.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = raw[o + "input_layernorm.weight"]
        out[h + "post_attention_layernorm.weight"] = raw[o + "post_attention_layernorm.weight"]
        if o + "attn.qkv_proj.MatMul.weight" in raw:
            qkv = matmul(o + "attn.qkv_proj.MatMul.weight")
            nq, nk = n_heads * head_dim, n_kv * head_dim
            out[h + "self_attn.q_proj.weight"] = qkv[:nq]
            out[h + "self_attn.k_proj.weight"] = qkv[nq:nq + nk]
            out[h + "self_attn.v_proj.weight"] = qkv[nq + nk:]
        else:
            for p in ("q", "k", "v"):
                out[h + f"self_attn.{p}_proj.weight"] = matmul(o + f"attn.{p}_proj.MatMul.weight")
        out[h + "self_attn.o_proj.weight"] = matmul(o + "attn.o_proj.MatMul.weight")
        for p in ("gate", "up", "down"):
            out[h + f"mlp.{p}_proj.weight"] = matmul(o + f"mlp.{p}_proj.MatMul.weight")
    out["model.norm.weight"] = raw[f"model.layers.{n_layers}.final_norm_layernorm.weight"]
    out["lm_head.weight"] = matmul("lm_head.MatMul.weight")
    return out


def gguf_tensors(tensors: dict[str, np.ndarray], config: dict):
    """(gguf name, array) in llama.cpp's order."""
    n_heads, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    yield "token_embd.weight", tensors["model.embed_tokens.weight"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        yield b + "attn_norm.weight", tensors[p + "input_layernorm.weight"]
        yield b + "attn_q.weight", rope_interleave(tensors[p + "self_attn.q_proj.weight"], n_heads)
        yield b + "attn_k.weight", rope_interleave(tensors[p + "self_attn.k_proj.weight"], n_kv)
        yield b + "attn_v.weight", tensors[p + "self_attn.v_proj.weight"]
        yield b + "attn_output.weight", tensors[p + "self_attn.o_proj.weight"]
        yield b + "ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"]
        yield b + "ffn_gate.weight", tensors[p + "mlp.gate_proj.weight"]
        yield b + "ffn_up.weight", tensors[p + "mlp.up_proj.weight"]
        yield b + "ffn_down.weight", tensors[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", tensors["model.norm.weight"]
    head = tensors.get("lm_head.weight")
    yield "output.weight", head if head is not None else tensors["model.embed_tokens.weight"]


def add_tokenizer(writer, hf: Path, config: dict, vocab_size: int, chat_template: str | None = None) -> None:
    import gguf

    tok = json.loads((hf / "tokenizer.json").read_text())
    model = tok["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"export_gguf: only BPE tokenizers are supported, not {model.get('type')}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in tok.get("added_tokens", []):
        i = added["id"]
        if i < vocab_size:
            tokens[i] = added["content"]
            types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tok_config = {}
    if (hf / "tokenizer_config.json").is_file():
        tok_config = json.loads((hf / "tokenizer_config.json").read_text())
    bos, eos = config.get("bos_token_id"), config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    if bos is not None:
        writer.add_bos_token_id(int(bos))
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    gen = {}
    if (hf / "generation_config.json").is_file():
        gen = json.loads((hf / "generation_config.json").read_text())
    extra = gen.get("eos_token_id")
    extra = [int(t) for t in (extra if isinstance(extra, list) else [extra]) if t is not None and t != eos]
    if extra:
        writer.add_eot_token_id(extra[0])
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(int(config["pad_token_id"]))
    writer.add_add_bos_token(bool(tok_config.get("add_bos_token", True)))
    template = chat_template if chat_template is not None else tok_config.get("chat_template")
    if isinstance(template, str):
        writer.add_chat_template(template)


def export(hf: Path, out: Path, outtype: str = "f32", chat_template: str | None = None) -> None:
    import gguf

    config = json.loads((hf / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise SystemExit(f"export_gguf: model_type {config.get('model_type')!r} is not 'llama'")
    tensors = load_tensors(hf) if any(hf.glob("*.safetensors")) else load_onnx_tensors(hf, config)
    n_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    vocab_size = config["vocab_size"]
    rope = config.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(hf.name if hf.name != "hf" else hf.parent.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(vocab_size)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    add_tokenizer(writer, hf, config, vocab_size, chat_template)
    for name, array in gguf_tensors(tensors, config):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if outtype == "f16" and array.ndim == 2:  # norms stay f32, as llama.cpp expects
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GGUF of a Llama model (HF checkpoint or ONNX model directory)")
    p.add_argument("hf", type=Path, help="model directory: config.json, tokenizer.json and *.safetensors "
                                         "or model.onnx (fp32)")
    p.add_argument("out", type=Path, help="output .gguf file")
    p.add_argument("--outtype", choices=("f32", "f16"), default="f32")
    p.add_argument("--chat-template", type=Path, metavar="FILE",
                   help="write this Jinja file as tokenizer.chat_template instead of tokenizer_config.json's")
    a = p.parse_args(argv)
    export(a.hf, a.out, a.outtype, a.chat_template.read_text() if a.chat_template else None)
    print(f"wrote {a.out} ({a.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
