"""OpenAI `/v1/completions`, CONTRACT §3."""

from __future__ import annotations

import time

from refserver.chat.grammars import native_constraint
from refserver.schemas.oai_completion import OAICompletionRequest
from refserver.stream.choice import ChoiceStream, usage
from refserver.stream.deltas import FinishDelta, TokenDelta
from refserver.stream.generation import Generation

from .base import BaseHandler
from .formats import completion_id, oai_completion_logprobs
from .state import SYSTEM_FINGERPRINT


class OAICompletionHandler(BaseHandler):
    route = "/v1/completions"
    sse_done = True

    async def post(self) -> None:
        state = self.state
        req = self.parse_body(OAICompletionRequest)
        reqs = req.to_generation_requests(state.tokenizer, state.defaults, native_constraint(req.grammar, req.json_schema))
        n = req.n_choices(state.defaults)
        self.top_n = req.top_n_probs()
        self.cmpl_id = completion_id("cmpl-")
        self.created = int(time.time())
        gen = self.start_generation(reqs, n=n)
        if req.stream:
            await self._stream()
        else:
            await self._collect(gen)

    def envelope(self, choices: list[dict]) -> dict:
        return {"choices": choices, "created": self.created, "model": self.state.model.alias,
                "system_fingerprint": SYSTEM_FINGERPRINT, "object": "text_completion", "id": self.cmpl_id}

    async def _collect(self, gen: Generation) -> None:
        await gen.collect()
        out = self.envelope([{
            "text": c.result.raw_text, "index": c.index,
            "logprobs": oai_completion_logprobs(c.result.logprobs, self.top_n) if self.top_n and c.result.logprobs
            else None,
            "finish_reason": c.result.finish.reason} for c in gen.choices])
        out["usage"] = gen.usage().to_openai()
        out["timings"] = gen.choices[-1].finished.timings
        self.write_json(out)

    async def _stream(self) -> None:
        async for c, deltas in self.stream_deltas():
            for d in deltas:
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
