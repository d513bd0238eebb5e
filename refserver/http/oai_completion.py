"""OpenAI `/v1/completions`, CONTRACT §3."""

from __future__ import annotations

import time

from refserver.chat.tool_calls import finish_reason_for
from refserver.engine.types import Finished, PromptProbs, TokenOut, TokenProbs
from refserver.schemas.oai_completion import OAICompletionRequest

from .base import BaseHandler, finite
from .completion import native_constraint
from .formats import ChoiceState, choice_states, completion_id, oai_completion_logprobs, usage
from .state import SYSTEM_FINGERPRINT


class OAICompletionHandler(BaseHandler):
    route = "/v1/completions"
    sse_done = True

    async def post(self) -> None:
        state = self.state
        req = self.parse_body(OAICompletionRequest)
        reqs = req.to_generation_requests(state.tokenizer, state.defaults, native_constraint(req))
        n = req.n_choices(state.defaults)
        choices = choice_states(reqs, n)
        self.top_n = req.top_n_probs()
        # echo: each prompt's text (and with logprobs its tokens' log-probabilities) first
        self.echo = req.echo_texts(state.tokenizer) if req.echo else None
        self.echo_probs = bool(req.echo) and req.logprobs is not None
        self.prompt_probs: dict[int, tuple] = {}
        self.cmpl_id = completion_id("cmpl-")
        self.created = int(time.time())
        self.submit(reqs)
        if req.stream:
            await self._stream(choices)
        else:
            await self._collect(choices)

    def envelope(self, choices: list[dict]) -> dict:
        return {"choices": choices, "created": self.created, "model": self.state.model.alias,
                "system_fingerprint": SYSTEM_FINGERPRINT, "object": "text_completion", "id": self.cmpl_id}

    def _echo_text(self, c: ChoiceState) -> str:
        return self.echo[c.group] if self.echo is not None else ""

    def _first_piece(self, c: ChoiceState) -> str:
        return self.state.tokenizer.piece(c.prompt[0])

    def _logprobs(self, c: ChoiceState) -> dict | None:
        if self.echo_probs:
            prompt_part = echo_logprobs(self._first_piece(c), self.prompt_probs.get(c.index, ()), self.top_n)
            return merge_logprobs(prompt_part, oai_completion_logprobs(c.probs, self.top_n,
                                                                       len(self._echo_text(c))))
        return oai_completion_logprobs(c.probs, self.top_n) if self.top_n and c.probs else None

    async def _collect(self, choices: list[ChoiceState]) -> None:
        async for i, event in self.events(keepalive=False):
            if isinstance(event, TokenOut):
                choices[i].add(event)
            elif isinstance(event, PromptProbs):
                self.prompt_probs[i] = event.entries
            elif isinstance(event, Finished):
                choices[i].finish(event)
        self.n_predicted_tokens = sum(c.finished.tokens_predicted for c in choices)
        out = self.envelope([{
            "text": self._echo_text(c) + c.content, "index": c.index, "logprobs": self._logprobs(c),
            "finish_reason": finish_reason_for(c.finished.stop_type, False)} for c in choices])
        out["usage"] = usage(choices)
        out["timings"] = choices[-1].finished.timings
        self.write_json(out)

    async def _stream(self, choices: list[ChoiceState]) -> None:
        echoed: set[int] = set()
        async for i, event in self.events(keepalive=True):
            c = choices[i]
            if self.echo is not None and i not in echoed and (isinstance(event, PromptProbs) or not self.echo_probs):
                echoed.add(i)
                lp = (echo_logprobs(self._first_piece(c), event.entries, self.top_n)
                      if isinstance(event, PromptProbs) else None)
                self.sse_send(self.envelope([{"text": self._echo_text(c), "index": i, "logprobs": lp,
                                              "finish_reason": None}]))
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


def echo_logprobs(first_piece: str, entries: tuple[TokenProbs | None, ...], top_n: int) -> dict:
    """The legacy logprobs of a prompt's own tokens, as vLLM echoes them: the first token
    (nothing before it) has `null` log-probability and alternatives."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = 0
    for entry in entries:
        piece = entry.chosen.token if entry is not None else first_piece
        tokens.append(piece)
        lps.append(finite(entry.chosen.logprob) if entry is not None else None)
        tops.append({p.token: finite(p.logprob) for p in entry.top[:top_n]} if entry is not None else None)
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def merge_logprobs(prompt_part: dict, generated: dict) -> dict:
    out = {key: prompt_part[key] + generated[key] for key in prompt_part}
    out["content"] = generated["content"]  # llama.cpp's list covers the generated tokens only
    return out
