"""Reading an ONNX model folder: which file, which layout, which names and shapes.

Everything here is decided once at load time from the graph's own inputs and outputs,
with `genai_config.json` and `config.json` filling what the graph leaves symbolic.

Layouts:

* "gqa": the graph uses com.microsoft `GroupQueryAttention` (onnxruntime-genai builder
  exports).  We detect the op by scanning the graph file for its name rather than trusting
  `genai_config.json`'s `search.past_present_share_buffer`: the op is what makes sharing
  one buffer as past and present possible, and hand-written configs exist.  Such a graph
  writes the new KV at index `rowsum(attention_mask) - S` of the past buffer and attends
  to `[0, rowsum)`; it may or may not take `position_ids` (it does when RoPE is a separate
  `RotaryEmbedding` node, e.g. head_dim not a multiple of 16).
* "plain": standard ops only (torch.onnx / optimum exports); `present = concat(past, new)`
  and `position_ids` is an input.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ModelInfo
from .errors import ModelLoadError

ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}
DEFAULT_CONTEXT_LENGTH = 2048  # only when neither genai_config.json nor config.json says


@dataclass(frozen=True)
class GraphSpec:
    """Input and output names of one decoder graph, plus dtypes the backend allocates."""

    input_ids: str
    attention_mask: str
    position_ids: str | None
    past: list[tuple[str, str]]  # per layer (key, value)
    present: list[tuple[str, str]]
    logits: str
    kv_dtype: np.dtype
    logits_dtype: np.dtype
    #: LongRoPE: the sequence length past which the graph uses its long-factor cache (0: none)
    rope_switch: int = 0


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; fix or remove the file") from exc


def model_file(model_dir: Path, genai: dict, filename: str | None = None) -> Path:
    """The graph file: `filename` if given, else genai_config's decoder filename, else
    `model.onnx`, else the folder's only `.onnx` file."""
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model folder {model_dir} does not exist; pass a folder holding model.onnx "
            "(e.g. an onnxruntime-genai builder or optimum export)")
    name = filename or genai.get("model", {}).get("decoder", {}).get("filename") or "model.onnx"
    graphs = sorted(p.name for p in model_dir.glob("*.onnx"))
    if not filename and name == "model.onnx" and name not in graphs and graphs:
        if len(graphs) > 1:
            raise ModelLoadError(
                f"{model_dir} holds several graphs ({', '.join(graphs)}) and no model.onnx; pass the "
                f"one to serve as -m {model_dir / graphs[0]}")
        name = graphs[0]
    path = model_dir / name
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found; the model folder must hold the exported graph as {name} "
            "(plus its .data file when weights are external)")
    return path


def graph_mentions(path: Path, name: bytes) -> bool:
    """Whether the graph file holds `name` (an op type or attribute name; bytes scan)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(name) >= 0


def uses_group_query_attention(path: Path) -> bool:
    """Whether the graph uses the com.microsoft GroupQueryAttention op."""
    return graph_mentions(path, b"GroupQueryAttention")


def model_size_bytes(path: Path) -> int:
    """Graph file plus its external data files (`model.onnx.data`, `model.onnx_data`, ...)."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def estimate_params(config: dict, size_bytes: int, bytes_per_weight: int) -> int:
    """Llama-shaped parameter count from config.json, else file size / weight size."""
    try:
        h, ffn = int(config["hidden_size"]), int(config["intermediate_size"])
        layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
        heads = int(config["num_attention_heads"])
        kvh = int(config.get("num_key_value_heads") or heads)
        hd = int(config.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return size_bytes // bytes_per_weight
    attn = h * heads * hd * 2 + h * kvh * hd * 2
    per_layer = attn + 3 * h * ffn + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * per_layer + h


def rope_switch(path: Path, config: dict) -> int | None:
    """For a graph with the builder's two LongRoPE caches (`cos_cache_large` / `_small`, picked
    by the attention mask's width): the length it switches at, config.json's
    original_max_position_embeddings; 0 for other graphs, None when the config does not say."""
    if not graph_mentions(path, b"cos_cache_large"):
        return 0
    for source in (config, config.get("rope_scaling") or {}, config.get("rope_parameters") or {}):
        value = source.get("original_max_position_embeddings") if isinstance(source, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _kv_names(names: set[str], template: str) -> list[str]:
    found = []
    while template % len(found) in names:
        found.append(template % len(found))
    return found


def _dim(shape, index: int):
    value = shape[index] if len(shape) > index else None
    return value if isinstance(value, int) and value > 0 else None


def inspect(session, model_dir: Path, path: Path, genai: dict, device: str) -> tuple[ModelInfo, GraphSpec]:
    """Read names, shapes, dtypes and sizes from the session's graph and the config files."""
    config = read_json(model_dir / "config.json")
    gmodel = genai.get("model", {})
    decoder = gmodel.get("decoder", {})
    gin, gout = decoder.get("inputs", {}), decoder.get("outputs", {})
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}

    def fail(what: str):
        raise ModelLoadError(
            f"{path}: {what}; refserver serves decoder-only LLM exports with a KV cache "
            "(onnxruntime-genai builder, optimum 'text-generation-with-past', torch.onnx)")

    past_k = _kv_names(set(inputs), gin.get("past_key_names", "past_key_values.%d.key"))
    past_v = _kv_names(set(inputs), gin.get("past_value_names", "past_key_values.%d.value"))
    pres_k = _kv_names(set(outputs), gout.get("present_key_names", "present.%d.key"))
    pres_v = _kv_names(set(outputs), gout.get("present_value_names", "present.%d.value"))
    if not past_k or not (len(past_k) == len(past_v) == len(pres_k) == len(pres_v)):
        fail("no matching past_key_values.N.key/value inputs and present.N.key/value outputs")
    names = {"input_ids": gin.get("input_ids", "input_ids"),
             "attention_mask": gin.get("attention_mask", "attention_mask"),
             "position_ids": gin.get("position_ids", "position_ids")}
    for role in ("input_ids", "attention_mask"):
        if names[role] not in inputs:
            fail(f"the graph has no {names[role]!r} input")
    position_ids = names["position_ids"] if names["position_ids"] in inputs else None
    known = {names["input_ids"], names["attention_mask"], position_ids, *past_k, *past_v}
    extra = sorted(set(inputs) - known)
    if extra:
        fail(f"unsupported extra inputs {extra}")
    if graph_mentions(path, b"sliding_window_cache"):
        fail("its sliding-window layers keep window-sized KV buffers (GroupQueryAttention "
             "sliding_window_cache, the builder's default on CPU), which refserver's one-buffer-per-row "
             "KV layout cannot serve; re-export with the builder's "
             "--extra_options windowed_kv_cache=false")
    logits = gout.get("logits", "logits")
    if logits not in outputs:
        fail(f"the graph has no {logits!r} output")

    past0 = inputs[past_k[0]]
    kv_dtype = ORT_DTYPES.get(past0.type)
    logits_dtype = ORT_DTYPES.get(outputs[logits].type)
    if kv_dtype is None or logits_dtype is None:
        fail(f"KV type {past0.type} / logits type {outputs[logits].type} (need float or float16)")
    n_kv_heads = (_dim(past0.shape, 1) or decoder.get("num_key_value_heads")
                  or config.get("num_key_value_heads") or config.get("num_attention_heads"))
    head_dim = _dim(past0.shape, 3) or decoder.get("head_size") or config.get("head_dim")
    if not head_dim and config.get("hidden_size") and config.get("num_attention_heads"):
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    vocab = _dim(outputs[logits].shape, 2) or gmodel.get("vocab_size") or config.get("vocab_size")
    if not (n_kv_heads and head_dim and vocab):
        fail("cannot tell KV heads, head size or vocab size from the graph, genai_config.json or config.json")
    context = int(gmodel.get("context_length") or config.get("max_position_embeddings")
                  or DEFAULT_CONTEXT_LENGTH)
    switch = rope_switch(path, config)
    if switch is None:
        fail("it has LongRoPE caches but config.json gives no original_max_position_embeddings "
             "(the length at which it switches to the long cache); put config.json beside it")

    size = model_size_bytes(path)
    info = ModelInfo(
        path=str(model_dir), vocab_size=int(vocab), n_layers=len(past_k), n_kv_heads=int(n_kv_heads),
        head_dim=int(head_dim), context_length=context, kv_dtype=kv_dtype.name,
        layout="gqa" if uses_group_query_attention(path) else "plain",
        uses_position_ids=position_ids is not None,
        n_params=estimate_params(config, size, kv_dtype.itemsize), size_bytes=size, device=device)
    spec = GraphSpec(names["input_ids"], names["attention_mask"], position_ids,
                     list(zip(past_k, past_v)), list(zip(pres_k, pres_v)), logits, kv_dtype, logits_dtype,
                     rope_switch=switch)
    return info, spec
