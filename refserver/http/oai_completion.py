"""OpenAI `/v1/completions`, CONTRACT §3."""

from __future__ import annotations

import time

from refserver.engine.types import TokenProbs
from refserver.schemas.oai_completion import OAICompletionRequest
from refserver.stream.choice import ChoiceStream, usage
from refserver.stream.deltas import FinishDelta, PromptProbsDelta, TokenDelta
from refserver.stream.generation import Generation

from .base import BaseHandler
from .completion import native_constraint
from .formats import completion_id, oai_completion_logprobs
from .offload import off_loop
from .state import SYSTEM_FINGERPRINT


class OAICompletionHandler(BaseHandler):
    route = "/v1/completions"
    sse_done = True

    async def post(self) -> None:
        state = self.state
        req = await off_loop(self.parse_body, OAICompletionRequest)
        reqs = await off_loop(req.to_generation_requests, state.tokenizer, state.defaults, native_constraint(req))
        n = req.n_choices(state.defaults)
        self.top_n = req.top_n_probs()
        # echo: each prompt's text (with logprobs, its tokens' log-probabilities) first
        self.echo = req.echo_texts(state.tokenizer) if req.echo else None
        self.echo_probs = bool(req.echo) and req.logprobs is not None
        self.cmpl_id = completion_id("cmpl-")
        self.created = int(time.time())
        gen = await self.start_generation(reqs, n=n)
        if req.stream:
            await self._stream()
        else:
            await self._collect(gen)

    def envelope(self, choices: list[dict]) -> dict:
        return {"choices": choices, "created": self.created, "model": self.state.model.alias,
                "system_fingerprint": SYSTEM_FINGERPRINT, "object": "text_completion", "id": self.cmpl_id}

    def _echo_text(self, c: ChoiceStream) -> str:
        return self.echo[c.group] if self.echo is not None else ""

    def _prompt_logprobs(self, c: ChoiceStream, entries: tuple) -> dict:
        return echo_logprobs(self.state.tokenizer.piece(c.request.prompt[0]), entries, self.top_n)

    def _logprobs(self, c: ChoiceStream) -> dict | None:
        r = c.result
        if self.echo_probs:
            generated = oai_completion_logprobs(r.logprobs, self.top_n, len(self._echo_text(c)))
            return merge_logprobs(self._prompt_logprobs(c, r.prompt_logprobs), generated)
        return oai_completion_logprobs(r.logprobs, self.top_n) if self.top_n and r.logprobs else None

    async def _collect(self, gen: Generation) -> None:
        await gen.collect()
        out = self.envelope([{
            "text": self._echo_text(c) + c.result.raw_text, "index": c.index, "logprobs": self._logprobs(c),
            "finish_reason": c.result.finish.reason} for c in gen.choices])
        out["usage"] = gen.usage().to_openai()
        out["timings"] = gen.choices[-1].finished.timings
        self.write_json(out)

    async def _stream(self) -> None:
        echoed: set[int] = set()
        async for c, deltas in self.stream_deltas():
            for d in deltas:
                if self.echo is not None and c.index not in echoed and (
                        isinstance(d, PromptProbsDelta) or not self.echo_probs):
                    echoed.add(c.index)
                    lp = self._prompt_logprobs(c, d.entries) if isinstance(d, PromptProbsDelta) else None
                    self.sse_send(self.envelope([{"text": self._echo_text(c), "index": c.index, "logprobs": lp,
                                                  "finish_reason": None}]))
                if isinstance(d, TokenDelta):
                    self.token_chunk(c, d)
                elif isinstance(d, FinishDelta):
                    self.finish_chunk(c, d)
        self.sse_done_line()
        self.finish()

    def token_chunk(self, c: ChoiceStream, d: TokenDelta) -> None:
        if not d.text and d.probs is None:
            return
        lp = oai_completion_logprobs([d.probs], self.top_n) if self.top_n and d.probs else None
        self.sse_send(self.envelope([{"text": d.text, "index": c.index, "logprobs": lp, "finish_reason": None}]))

    def finish_chunk(self, c: ChoiceStream, d: FinishDelta) -> None:
        last = self.envelope([{"text": d.finished.text, "index": c.index, "logprobs": None,
                               "finish_reason": d.reason}])
        last["usage"] = usage([c]).to_openai()
        last["timings"] = d.finished.timings
        self.sse_send(last)


def echo_logprobs(first_piece: str, entries: tuple[TokenProbs | None, ...], top_n: int) -> dict:
    """The legacy logprobs of a prompt's own tokens, as vLLM echoes them: the first token
    (nothing before it) has `null` log-probability and alternatives."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = 0
    for entry in entries:
        piece = entry.chosen.token if entry is not None else first_piece
        tokens.append(piece)
        lps.append(entry.chosen.logprob if entry is not None else None)
        tops.append({p.token: p.logprob for p in entry.top[:top_n]} if entry is not None else None)
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def merge_logprobs(prompt_part: dict, generated: dict) -> dict:
    out = {key: prompt_part[key] + generated[key] for key in prompt_part}
    out["content"] = generated["content"]  # llama.cpp's list covers the generated tokens only
    return out
