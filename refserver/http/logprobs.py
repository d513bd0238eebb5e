"""Token probabilities in llama.cpp's shape (`completion_probabilities`) and OpenAI's
(chat `logprobs.content`, legacy completions).  Log-probabilities come finite from the engine."""

from __future__ import annotations

from refserver.engine.types import TokenProb, TokenProbs


def _native_entry(p: TokenProb, post: bool) -> dict:
    d = {"id": p.id, "token": p.token, "bytes": list(p.bytes)}
    if post:
        d["prob"] = p.value
    else:
        d["logprob"] = p.value
    return d


def native_probs(tp: TokenProbs, post_sampling: bool) -> dict:
    """One `completion_probabilities` entry (CONTRACT §2)."""
    d = _native_entry(tp.chosen, post_sampling)
    d["top_probs" if post_sampling else "top_logprobs"] = [_native_entry(p, post_sampling) for p in tp.top]
    return d


def oai_logprob(tp: TokenProbs, top_n: int) -> dict:
    """One entry of OpenAI's `logprobs.content` (chat shape)."""
    c = tp.chosen
    return {"id": c.id, "token": c.token, "bytes": list(c.bytes), "logprob": c.value,
            "top_logprobs": [{"id": p.id, "token": p.token, "bytes": list(p.bytes), "logprob": p.value}
                             for p in tp.top[:top_n]]}


def oai_completion_logprobs(entries: list[TokenProbs], top_n: int, text_offset0: int = 0) -> dict:
    """OpenAI's legacy completions shape, plus llama.cpp's `content` list."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = text_offset0
    for tp in entries:
        tokens.append(tp.chosen.token)
        lps.append(tp.chosen.value)
        tops.append({p.token: p.value for p in tp.top[:top_n]})
        offsets.append(offset)
        offset += len(tp.chosen.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets,
            "content": [oai_logprob(tp, top_n) for tp in entries]}
