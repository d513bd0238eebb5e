"""Train a small Llama decoder on the generated corpus (development tool; needs torch).

The model is written here in plain torch with Hugging Face's LlamaForCausalLM parameter
names and RoPE convention, so `export_model.py` can save it as an HF checkpoint and hand
it to onnxruntime-genai's builder.  Training runs on a wall-clock budget (`--minutes`):
the learning rate warms up, holds, then decays over the last 20% of the budget, so a run
squeezed by other work on the machine still ends with a decayed model.  Checkpoints are
written every few minutes; `--resume` continues one.

Nondeterminism: batches and initial weights are seeded, but the number of steps depends
on wall-clock speed, so two runs end at different step counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from tools.corpus import Corpus


@dataclass
class LlamaConfig:
    vocab_size: int = 4098
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


PRESETS = {
    "main": LlamaConfig(),
    "draft": LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.c = c
        d, h, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
        self.q_proj = nn.Linear(d, h * c.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv * c.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv * c.head_dim, bias=False)
        self.o_proj = nn.Linear(h * c.head_dim, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Llama(nn.Module):
    """Parameter names match transformers' LlamaForCausalLM (model.*, lm_head)."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.c.initializer_range)

    def forward(self, ids):
        t = ids.shape[1]
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos.to(x.dtype), sin.to(x.dtype))
        return self.lm_head(self.model.norm(x))


def batches(tok: Tokenizer, seed: int, start_doc: int, batch: int, seq: int, mix: dict[str, float] | None = None,
            letters: float = 0.0):
    """Yield (tokens [batch, seq+1], next_doc) from the packed, endless document stream."""
    corpus = Corpus(seed, weights=mix, letters=letters)
    doc, buf = start_doc, []
    need = batch * (seq + 1)
    while True:
        while len(buf) < need:
            texts = [corpus.example(i).text for i in range(doc, doc + 256)]
            doc += 256
            for enc in tok.encode_batch(texts, add_special_tokens=False):
                buf.extend(enc.ids)
        chunk, buf = buf[:need], buf[need:]
        yield torch.tensor(chunk, dtype=torch.long).view(batch, seq + 1), doc


def lr_at(frac: float, peak: float, warm: float = 0.03, decay_from: float = 0.8) -> float:
    if frac < warm:
        return peak * frac / warm
    if frac < decay_from:
        return peak
    p = min(1.0, (frac - decay_from) / (1 - decay_from))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--checkpoint-minutes", type=float, default=4.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--mix", default="", metavar="FAMILY=W,...",
                    help="override corpus family weights (e.g. story=0.18,tool=0.37), for a final "
                         "phase that spends more tokens on the families the eval finds weakest")
    ap.add_argument("--letters", type=float, default=0.0, metavar="P",
                    help="probability that a value to copy is random letters instead of a pseudo-word "
                         "of known syllables (teaches copying rare token pieces)")
    ap.add_argument("--decay-from", type=float, default=0.8,
                    help="fraction of the budget after which the learning rate decays; a resumed "
                         "run with a larger --minutes can start its decay soon after the resume")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # Adam's second moments of rarely seen tokens decay into subnormal floats, which
    # made steps ~10x slower after an hour; flush them to zero.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    cfg = PRESETS[args.preset]
    tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    cfg.vocab_size = tok.get_vocab_size()
    model = Llama(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"
    state = {"step": 0, "elapsed": 0.0, "doc": 0, "tokens": 0}
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params/1e6:.2f}M  config {asdict(cfg)}", flush=True)
    budget = args.minutes * 60
    mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(",") if kv)}
    data = batches(tok, args.seed, state["doc"], args.batch, args.seq, mix or None, args.letters)

    def save():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                    "config": asdict(cfg)}, ckpt_path)

    stop = []  # SIGTERM: checkpoint and exit, so a run can be resumed with other --threads
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    t0, last_ckpt, loss_avg = time.time() - state["elapsed"], time.time(), None
    while state["elapsed"] < budget and not stop:
        x, state["doc"] = next(data)
        lr = lr_at(state["elapsed"] / budget, args.lr, decay_from=args.decay_from)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["tokens"] += x[:, 1:].numel()
        state["elapsed"] = time.time() - t0
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if state["step"] % 25 == 0:
            rate = state["tokens"] / state["elapsed"]
            print(f"step {state['step']} tokens {state['tokens']/1e6:.2f}M loss {loss_avg:.4f} "
                  f"lr {lr:.2e} {rate:.0f} tok/s elapsed {state['elapsed']/60:.1f}m", flush=True)
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save()
            last_ckpt = time.time()
    save()
    if stop:
        print("stopped by SIGTERM; resume with --resume", flush=True)
        return
    (args.out / "train_state.json").write_text(json.dumps(
        dict(state, seed=args.seed, lr=args.lr, batch=args.batch, seq=args.seq,
             minutes=args.minutes, params=n_params, preset=args.preset), indent=2))
    print("done", json.dumps(state), flush=True)


if __name__ == "__main__":
    main()
