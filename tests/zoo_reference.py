"""The plain onnxruntime loop the zoo's int4 / fp16 exports are checked against.

No refserver code: one session, batch 1, the whole prompt in one call, then one token per
call, each call's `present` fed back as the next `past` (so it runs any KV layout the graph
defines, windowed or not).  tools/make_zoo.py uses it too, to record how far each export
agrees with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _kv_shape(arg, genai: dict) -> tuple[int, int]:
    decoder = genai.get("model", {}).get("decoder", {})
    heads = arg.shape[1] if isinstance(arg.shape[1], int) else decoder["num_key_value_heads"]
    size = arg.shape[3] if isinstance(arg.shape[3], int) else decoder["head_size"]
    return heads, size


def onnx_greedy(model_dir: str | Path, prompt: list[int], n_new: int, banned: list[int]) -> list[int]:
    """Greedy ids after `prompt` with `banned` ids never chosen."""
    model_dir = Path(model_dir)
    genai_path = model_dir / "genai_config.json"
    genai = json.loads(genai_path.read_text()) if genai_path.is_file() else {}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    past = {}
    for name, arg in inputs.items():
        if name.startswith("past_key_values."):
            heads, size = _kv_shape(arg, genai)
            past[name] = np.zeros((1, heads, 0, size), _DTYPES[arg.type])
    outputs = [o.name for o in session.get_outputs()]
    present_of = {n: n.replace("past_key_values.", "present.") for n in past}
    tokens, done, out = list(prompt), 0, []
    while len(out) < n_new:
        new = tokens[done:]
        feeds = {"input_ids": np.array([new], np.int64),
                 "attention_mask": np.ones((1, len(tokens)), np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(done, len(tokens), dtype=np.int64)[None]
        results = dict(zip(outputs, session.run(outputs, feeds)))
        past = {n: results[present_of[n]] for n in past}
        logits = results["logits"][0, -1].astype(np.float32)
        logits[banned] = -np.inf
        done = len(tokens)
        out.append(int(logits.argmax()))
        tokens.append(out[-1])
    return out
