"""torch.onnx export of a Hugging Face Llama in the plain (optimum) layout, for the zoo.

Inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key/value`;
outputs `logits`, `present.{i}.key/value` with `present = concat(past, new)`.  The forward
reuses the HF modules (projections, norms, MLP, rotary embedding) and writes attention out
with an explicit causal + padding mask, which the tracer exports as standard ops.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


class PlainLlama(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        c, inner = self.m.config, self.m.model
        b, s = input_ids.shape
        total = attention_mask.shape[1]
        q_pos = torch.arange(s)[:, None] + (total - s)
        allowed = (torch.arange(total)[None, :] <= q_pos)[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        x = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(x, position_ids)
        presents = []
        rep = c.num_attention_heads // c.num_key_value_heads
        for i, layer in enumerate(inner.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(b, s, c.num_attention_heads, c.head_dim).transpose(1, 2)
            k = att.k_proj(h).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
            v = att.v_proj(h).view(b, s, c.num_key_value_heads, c.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = q @ kr.transpose(-1, -2) * att.scaling + bias
            y = torch.softmax(scores, dim=-1) @ vr
            x = x + att.o_proj(y.transpose(1, 2).reshape(b, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return (self.m.lm_head(inner.norm(x)), *presents)


def export_llama_plain(hf: Path, out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    c = model.config
    names_in, names_out, past = ["input_ids", "attention_mask", "position_ids"], ["logits"], []
    for i in range(c.num_hidden_layers):
        for kind in ("key", "value"):
            names_in.append(f"past_key_values.{i}.{kind}")
            names_out.append(f"present.{i}.{kind}")
            past.append(torch.zeros(1, c.num_key_value_heads, 3, c.head_dim))
    args = (torch.tensor([[5, 6]]), torch.ones(1, 5, dtype=torch.long), torch.tensor([[3, 4]]), *past)
    dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
           "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
           "position_ids": {0: "batch_size", 1: "sequence_length"},
           "logits": {0: "batch_size", 1: "sequence_length"}}
    for n in names_in[3:]:
        dyn[n] = {0: "batch_size", 2: "past_sequence_length"}
    for n in names_out[1:]:
        dyn[n] = {0: "batch_size", 2: "total_sequence_length"}
    with torch.no_grad():
        torch.onnx.export(PlainLlama(model), args, str(out / "model.onnx"), input_names=names_in,
                          output_names=names_out, dynamic_axes=dyn, opset_version=17, dynamo=False)
