"""Compare the greedy continuations of two servers on the same weights, token for token.

    python tools/compare_greedy.py --ref http://127.0.0.1:8080 --other http://127.0.0.1:8081

Each prompt is tokenized once by the reference server (`/tokenize`, with BOS), and the
same token ids go to `/completion` on both servers with temperature 0, `ignore_eos` and
`return_tokens`, so the two tokenizers never enter into it.  For every prompt it prints
whether the ids match, the first diverging position, and there both servers' top
candidates (`n_probs`), which tells a numeric near-tie from a real disagreement.  The
last line is `matched K/N prompts, T/M tokens before the first divergence`.  `--params`
adds request fields to every prompt, to compare samplers that act under greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

PROMPTS = [
    "Once upon a time, there was a little cat named Tom.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nTell me a story about a dog.<|im_end|>\n<|im_start|>assistant\n",
    ("<|im_start|>system\nYou answer in JSON.<|im_end|>\n<|im_start|>user\nGive me a person with a "
     "name and an age.<|im_end|>\n<|im_start|>assistant\n"),
    "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>",
    "The sun was shining and the birds",
    "Lily and Ben went to the park. They",
    "3 + 4 = 7. 12 - 5 =",
    "<|im_start|>user\nHello! Who are you?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n",
    "One day, a big red ball",
]


def post(url: str, path: str, body: dict) -> dict:
    r = requests.post(url.rstrip("/") + path, json=body, timeout=120)
    r.raise_for_status()
    return r.json()


def top(body: dict, pos: int) -> list:
    probs = body.get("completion_probabilities") or []
    if pos >= len(probs):
        return []
    entry = probs[pos]
    cands = entry.get("top_logprobs") or entry.get("top_probs") or entry.get("probs") or []
    out = []
    for c in cands[:3]:
        value = c.get("logprob", c.get("prob"))
        out.append((c.get("id"), c.get("token"), round(value, 4) if isinstance(value, float) else value))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="the reference server (tokenizes the prompts)")
    ap.add_argument("--other", required=True, help="the server compared with it")
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--n-probs", type=int, default=3)
    ap.add_argument("--json", help="also write the per-prompt results here")
    ap.add_argument("--params", type=json.loads, default={}, metavar="JSON",
                    help="more request fields for every prompt, e.g. '{\"repeat_penalty\": 1.5}' "
                         "(samplers that act under greedy: penalties, DRY, logit_bias)")
    a = ap.parse_args(argv)

    matched = tokens_same = tokens_all = 0
    results = []
    for text in PROMPTS:
        ids = post(a.ref, "/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
        body = {"prompt": ids, "temperature": 0, "n_predict": a.n_predict, "ignore_eos": True,
                "return_tokens": True, "n_probs": a.n_probs, "cache_prompt": False, "seed": 0, **a.params}
        ref, other = post(a.ref, "/completion", body), post(a.other, "/completion", body)
        r_ids, o_ids = ref["tokens"], other["tokens"]
        div = next((i for i, (x, y) in enumerate(zip(r_ids, o_ids, strict=False)) if x != y),
                   None if len(r_ids) == len(o_ids) else min(len(r_ids), len(o_ids)))
        same = len(r_ids) if div is None else div
        matched += div is None
        tokens_same += same
        tokens_all += len(r_ids)
        row = {"prompt": text, "n_prompt": len(ids), "match": div is None, "first_divergence": div,
               "ref_tokens": r_ids, "other_tokens": o_ids}
        if div is not None:
            row["ref_top"], row["other_top"] = top(ref, div), top(other, div)
        results.append(row)
        status = "MATCH" if div is None else f"DIVERGE at {div}: ref {row['ref_top']} other {row['other_top']}"
        print(f"{len(ids):3d} prompt ids, {len(r_ids)} generated  {status}  {text[:40]!r}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(f"matched {matched}/{len(PROMPTS)} prompts, {tokens_same}/{tokens_all} tokens before the first divergence")
    return 0 if matched == len(PROMPTS) else 1


if __name__ == "__main__":
    sys.exit(main())
