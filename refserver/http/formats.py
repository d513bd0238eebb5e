"""Response pieces shared by the endpoints: token probabilities in llama.cpp's and
OpenAI's shapes, per-choice accumulation of engine events, `response_fields`."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from refserver.engine.types import Finished, GenerationRequest, TokenOut, TokenProb, TokenProbs

from .base import finite

_ALNUM = string.ascii_letters + string.digits


def completion_id(prefix: str) -> str:
    """`chatcmpl-` / `cmpl-` plus 32 alphanumeric characters."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(32))


# ------------------------------------------------------------------ probabilities
def _native_entry(p: TokenProb, post: bool) -> dict:
    d = {"id": p.id, "token": p.token, "bytes": list(p.bytes)}
    if post:
        d["prob"] = p.logprob
    else:
        d["logprob"] = finite(p.logprob)
    return d


def native_probs(tp: TokenProbs, post_sampling: bool) -> dict:
    """One `completion_probabilities` entry (CONTRACT §2)."""
    d = _native_entry(tp.chosen, post_sampling)
    d["top_probs" if post_sampling else "top_logprobs"] = [_native_entry(p, post_sampling) for p in tp.top]
    return d


def oai_logprob(tp: TokenProbs, top_n: int) -> dict:
    """One entry of OpenAI's `logprobs.content` (chat shape)."""
    c = tp.chosen
    return {"id": c.id, "token": c.token, "bytes": list(c.bytes), "logprob": finite(c.logprob),
            "top_logprobs": [{"id": p.id, "token": p.token, "bytes": list(p.bytes), "logprob": finite(p.logprob)}
                             for p in tp.top[:top_n]]}


def oai_completion_logprobs(entries: list[TokenProbs], top_n: int, text_offset0: int = 0) -> dict:
    """OpenAI's legacy completions shape, plus llama.cpp's `content` list."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = text_offset0
    for tp in entries:
        tokens.append(tp.chosen.token)
        lps.append(finite(tp.chosen.logprob))
        tops.append({p.token: finite(p.logprob) for p in tp.top[:top_n]})
        offsets.append(offset)
        offset += len(tp.chosen.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets,
            "content": [oai_logprob(tp, top_n) for tp in entries]}


# ------------------------------------------------------------------ accumulation
@dataclass
class ChoiceState:
    """What one engine request has produced so far."""

    index: int
    prompt: list[int]
    group: int = 0  # choices generated from the same prompt share a group
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    probs: list[TokenProbs] = field(default_factory=list)
    finished: Finished | None = None
    id_slot: int = -1
    sent_role: bool = False

    def add(self, event: TokenOut) -> None:
        self.tokens.append(event.token)
        if event.text:
            self.text.append(event.text)
        if event.probs is not None:
            self.probs.append(event.probs)

    def finish(self, event: Finished) -> None:
        self.finished = event
        self.id_slot = event.id_slot
        if event.text:
            self.text.append(event.text)

    @property
    def content(self) -> str:
        return "".join(self.text)


def choice_states(reqs: list[GenerationRequest], n: int) -> list[ChoiceState]:
    """One ChoiceState per engine request; each run of n requests (the choices of one
    prompt) is a group."""
    return [ChoiceState(i, r.prompt, group=i // n) for i, r in enumerate(reqs)]


def usage(choices: list[ChoiceState]) -> dict:
    """OpenAI usage; prompts shared by n choices are counted once."""
    seen: set[int] = set()
    prompt_tokens = cached = 0
    for c in choices:
        key = c.group
        if key in seen or c.finished is None:
            continue
        seen.add(key)
        prompt_tokens += c.finished.tokens_evaluated
        cached += int(c.finished.timings.get("cache_n", 0))
    completion = sum(c.finished.tokens_predicted for c in choices if c.finished is not None)
    return {"completion_tokens": completion, "prompt_tokens": prompt_tokens,
            "total_tokens": completion + prompt_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


# ------------------------------------------------------------------ response_fields
_MISSING = object()


def select_fields(obj: dict, paths: list[str]) -> dict:
    """llama.cpp's `response_fields`: only the listed paths; `a/b` is looked up nested and
    returned under the literal key "a/b"; missing paths are left out."""
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = obj
        for part in path.split("/"):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is _MISSING:
                break
        if node is not _MISSING:
            out[path] = node
    return out
