"""OpenAI `/v1/completions`, CONTRACT §3."""

from __future__ import annotations

import time

from refserver.chat.tool_calls import finish_reason_for
from refserver.engine.types import Finished, TokenOut
from refserver.schemas.oai_completion import OAICompletionRequest

from .base import BaseHandler
from .completion import native_constraint
from .formats import ChoiceState, choice_states, completion_id, oai_completion_logprobs, usage
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
        choices = choice_states(reqs, n)
        self.top_n = req.top_n_probs()
        self.cmpl_id = completion_id("cmpl-")
        self.created = int(time.time())
        await self.submit(reqs)
        if req.stream:
            await self._stream(choices)
        else:
            await self._collect(choices)

    def envelope(self, choices: list[dict]) -> dict:
        return {"choices": choices, "created": self.created, "model": self.state.model.alias,
                "system_fingerprint": SYSTEM_FINGERPRINT, "object": "text_completion", "id": self.cmpl_id}

    async def _collect(self, choices: list[ChoiceState]) -> None:
        await self.collect(choices)
        out = self.envelope([{
            "text": c.content, "index": c.index,
            "logprobs": oai_completion_logprobs(c.probs, self.top_n) if self.top_n and c.probs else None,
            "finish_reason": finish_reason_for(c.finished.stop_type, False)} for c in choices])
        out["usage"] = usage(choices)
        out["timings"] = choices[-1].finished.timings
        self.write_json(out)

    async def _stream(self, choices: list[ChoiceState]) -> None:
        async for i, event in self.events(keepalive=True):
            c = choices[i]
            if isinstance(event, TokenOut):
                c.add(event)
                if not event.text and event.probs is None:
                    continue
                lp = oai_completion_logprobs([event.probs], self.top_n) if self.top_n and event.probs else None
                self.sse_send(self.envelope([{"text": event.text, "index": i, "logprobs": lp,
                                              "finish_reason": None}]))
            elif isinstance(event, Finished):
                c.finish(event)
                self.n_predicted_tokens += event.tokens_predicted
                last = self.envelope([{"text": event.text, "index": i, "logprobs": None,
                                       "finish_reason": finish_reason_for(event.stop_type, False)}])
                last["usage"] = usage([c])
                last["timings"] = event.timings
                self.sse_send(last)
        self.sse_done_line()
        self.finish()
