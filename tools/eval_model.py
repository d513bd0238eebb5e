"""Evaluate an exported model on held-out prompts of every corpus family (no torch).

Runs the ONNX model with onnxruntime (greedy), the tokenizer with `tokenizers` and tool
calls the way the server decodes them: once the model opens `<tool_call>`, a llguidance
grammar built from the request's `tools` (refserver's own `tools_constraint`) allows
only the listed names and argument names, so the model decides to call and copies the
values.  Prompts come from the corpus generator in held-out mode: names, cities,
pseudo-words and number pairs that never occur in training.

Prints one line per family and, as its last line, `exact_match X.XX on N held-out prompts`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import llguidance
import llguidance.numpy
import numpy as np
import onnxruntime as ort

from refserver.chat.grammars import tools_constraint
from refserver.chat.tool_calls import HermesToolCallParser
from refserver.tokenizer import TextTokenizer
from tools.corpus import Corpus

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "refserver" / "models" / "chat"
COUNTS = {"story": 15, "chat": 15, "capital": 20, "math": 20, "json": 15, "echo": 15, "tool": 40}


class Greedy:
    """A minimal greedy decoder over the standard ONNX KV layout (dynamic past)."""

    def __init__(self, model_dir: Path, threads: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts,
                                         providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        config = json.loads((model_dir / "config.json").read_text())
        self.kvh, self.hd = config["num_key_value_heads"], config["head_dim"]
        self.out_names = [o.name for o in self.sess.get_outputs()]

    def generate(self, prompt: list[int], max_new: int, stop_ids: set[int], constrain=None) -> list[int]:
        past = {n: np.zeros((1, self.kvh, 0, self.hd), np.float32) for n in self.past_names}
        pos, chunk, out = 0, prompt, []
        for _ in range(max_new):
            feed = {"input_ids": np.array([chunk], np.int64),
                    "attention_mask": np.ones((1, pos + len(chunk)), np.int64), **past}
            if "position_ids" in self.inputs:
                feed["position_ids"] = np.arange(pos, pos + len(chunk), dtype=np.int64)[None]
            res = dict(zip(self.out_names, self.sess.run(self.out_names, feed)))
            past = {n: res[n.replace("past_key_values", "present")] for n in self.past_names}
            pos += len(chunk)
            logits = res["logits"][0, -1].astype(np.float64)
            if constrain is not None:
                logits = constrain.mask(logits)
            token = int(np.argmax(logits))
            out.append(token)
            if constrain is not None:
                constrain.consume(token)
            if token in stop_ids or (constrain is not None and constrain.done):
                break
            chunk = [token]
        return out


class LazyToolGrammar:
    """Unconstrained until `<tool_call>`, then the tools grammar (as the server does)."""

    def __init__(self, lltok, tok: TextTokenizer, tools: list[dict]):
        c = tools_constraint(tools, "auto", parallel_tool_calls=True, token_names=tok.added_token_names)
        self.grammar = llguidance.LLMatcher.grammar_from_lark(c.text)
        self.trigger = tok.encode(c.lazy_trigger)
        self.lltok, self.vocab = lltok, tok.vocab_size
        self.matcher, self.recent, self.done = None, [], False
        self.mask_buf = llguidance.numpy.allocate_token_bitmask(1, lltok.vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        if self.matcher is None:
            return logits
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.mask_buf, 0)
        allowed = np.unpackbits(self.mask_buf.view(np.uint8), bitorder="little")[: logits.shape[0]]
        return np.where(allowed.astype(bool), logits, -np.inf)

    def consume(self, token: int) -> None:
        if self.matcher is not None:
            self.matcher.consume_token(token)
            self.done = self.matcher.is_stopped()
            return
        self.recent = (self.recent + [token])[-len(self.trigger):]
        if self.recent == self.trigger:
            self.matcher = llguidance.LLMatcher(self.lltok, self.grammar)


def score(family: str, ex, text: str) -> bool:
    answer = text.split("<|im_end|>")[0]
    if family == "story":
        return text.startswith(" " + ex.expected["name"] + " ")
    if family == "json":
        try:
            return json.loads(answer) == ex.expected["json"]
        except ValueError:
            return False
    if family == "tool":
        _, calls = HermesToolCallParser().parse(answer)
        got = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in calls]
        return got == ex.expected["calls"]
    return answer == ex.expected["answer"]


def held_out_examples(family: str, n: int, seed: int):
    corpus, i, out = Corpus(seed, held_out=True), 0, []
    while len(out) < n:
        ex = corpus.example(i, family)
        i += 1
        if family == "tool" and "calls" not in ex.expected:
            continue
        out.append(ex)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=777, help="eval corpus seed (training used 1234)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply prompts per family")
    ap.add_argument("--show", action="store_true", help="print every failure")
    args = ap.parse_args()

    tok = TextTokenizer(args.model)
    lltok = llguidance.LLTokenizer(str(tok.path), eos_token=tok.tok.token_to_id("<|im_end|>"))
    model = Greedy(args.model, args.threads)
    total = correct = 0
    worst = 1.0
    for family, n in COUNTS.items():
        ok = 0
        examples = held_out_examples(family, max(1, int(n * args.scale)), args.seed)
        for ex in examples:
            constrain = LazyToolGrammar(lltok, tok, ex.tools) if family == "tool" else None
            ids = model.generate(tok.encode(ex.prompt), 64, set(tok.eog_ids), constrain)
            text = tok.decode(ids)
            good = score(family, ex, text)
            ok += good
            if args.show and not good:
                print(f"  FAIL {family}: {ex.prompt[-80:]!r} -> {text!r}")
        total += len(examples)
        correct += ok
        worst = min(worst, ok / len(examples))
        print(f"{family:8s} {ok / len(examples):.2f} ({ok}/{len(examples)})", flush=True)
    print(f"lowest family {worst:.2f}")
    print(f"exact_match {correct / total:.2f} on {total} held-out prompts")


if __name__ == "__main__":
    main()
