"""OpenAI `/v1/chat/completions` (alias `/chat/completions`) and `/apply-template`, CONTRACT §3."""

from __future__ import annotations

import time

from refserver.schemas.chat import ChatRequest
from refserver.stream.choice import ChoiceStream
from refserver.stream.deltas import (
    FinishDelta,
    ProgressDelta,
    ReasoningDelta,
    TextDelta,
    TokenDelta,
    ToolCallArgs,
    ToolCallStart,
)
from refserver.stream.generation import Generation

from .base import BaseHandler, log
from .chat_pipeline import prepare_chat, render_prompt
from .completion import native_final
from .formats import completion_id, oai_logprob
from .offload import off_loop
from .state import SYSTEM_FINGERPRINT


class ApplyTemplateHandler(BaseHandler):
    route = "/apply-template"

    async def post(self) -> None:
        req = await off_loop(self.parse_body, ChatRequest)
        req.check_tools(self.state.config.jinja)
        self.write_json({"prompt": await off_loop(render_prompt, self.state, req)})


class ChatHandler(BaseHandler):
    route = "/v1/chat/completions"
    sse_done = True

    async def post(self) -> None:
        state = self.state
        req = await off_loop(self.parse_body, ChatRequest)
        n_probs, self.top_n = req.n_probs_requested()
        n = req.n_choices(state.defaults)
        chat = await off_loop(prepare_chat, state, req, n=n, n_probs=n_probs)
        if state.config.verbose:
            log.debug("request %s prompt: %r", self.request_id, chat.prompt_text)
        self.use_tools = chat.use_tools
        self.want_logprobs = bool(req.logprobs)
        self.req = req
        self.chat_id = completion_id("chatcmpl-")
        self.created = int(time.time())
        gen = await self.start_generation(chat.requests, n=n, parsers=chat.parsers)
        if req.stream:
            await self._stream(req, gen)
        else:
            await self._collect(gen)

    def envelope(self, choices: list[dict], chunk: bool) -> dict:
        return {"choices": choices, "created": self.created, "id": self.chat_id,
                "model": self.state.model.alias, "system_fingerprint": SYSTEM_FINGERPRINT,
                "object": "chat.completion.chunk" if chunk else "chat.completion"}

    def verbose_object(self, choice: ChoiceStream, stream: bool) -> dict:
        return native_final(self.state, self.req, choice, stream)

    def logprobs_of(self, probs: list) -> dict:
        return {"content": [oai_logprob(p, self.top_n) for p in probs]}

    # ------------------------------------------------------------------ non-streamed
    async def _collect(self, gen: Generation) -> None:
        await gen.collect()
        out = self.envelope([self.message_choice(c) for c in gen.choices], chunk=False)
        out["usage"] = gen.usage().to_openai()
        out["timings"] = gen.choices[-1].finished.timings
        if self.state.config.verbose or self.req.verbose:
            out["__verbose"] = self.verbose_object(gen.choices[0], stream=False)
        self.write_json(out)

    def message_choice(self, c: ChoiceStream) -> dict:
        r = c.result
        message: dict = {"role": "assistant", "content": r.content}
        if r.reasoning:
            message["reasoning_content"] = r.reasoning_text
        if r.tool_calls:
            message["content"] = r.content.strip() or None
            message["tool_calls"] = [{"id": t.id, "type": "function",
                                      "function": {"name": t.name, "arguments": t.arguments}}
                                     for t in r.tool_calls]
        entry = {"finish_reason": r.finish.reason, "index": c.index, "message": message}
        if self.want_logprobs:
            entry["logprobs"] = self.logprobs_of(r.logprobs)
        return entry

    # ------------------------------------------------------------------ streamed
    async def _stream(self, req: ChatRequest, gen: Generation) -> None:
        chunkers = [ChatChunker(self, c) for c in gen.choices]
        async for c, deltas in self.stream_deltas():
            chunkers[c.index].write(deltas)
        if req.stream_options and req.stream_options.include_usage:
            tail = self.envelope([], chunk=True)
            tail["usage"] = gen.usage().to_openai()
            tail["timings"] = gen.choices[-1].finished.timings
            self.sse_send(tail)
        self.sse_done_line()
        self.finish()


class ChatChunker:
    """One choice's deltas → `chat.completion.chunk` events.

    The first chunk carries the role; each token's logprob entry rides on the next chunk
    the choice sends (content, reasoning, tool call or the finish chunk), so every
    generated token -- EOS and tool-call markup included -- has exactly one entry.
    """

    def __init__(self, handler: ChatHandler, choice: ChoiceStream):
        self.h = handler
        self.choice = choice
        self.sent_role = False
        self.probs: list = []
        self.extra: dict = {}

    def send(self, delta: dict, finish_reason: str | None = None, **extra) -> None:
        entry = {"finish_reason": finish_reason, "index": self.choice.index, "delta": delta}
        if self.probs and self.h.want_logprobs:
            entry["logprobs"] = self.h.logprobs_of(self.probs)
            self.probs = []
        chunk = self.h.envelope([entry], chunk=True)
        chunk.update(self.extra)
        chunk.update(extra)
        self.h.sse_send(chunk)

    def write(self, deltas: list) -> None:
        self.extra = {}
        skip = -1
        for k, d in enumerate(deltas):
            if k == skip:
                continue
            if isinstance(d, ProgressDelta):
                self.progress(d)
                continue
            if not self.sent_role:
                self.sent_role = True
                self.send({"role": "assistant", "content": None})
            if isinstance(d, TokenDelta):
                if d.probs is not None:
                    self.probs.append(d.probs)
                self.extra = {"timings": d.timings} if d.timings else {}
            elif isinstance(d, TextDelta):
                self.send({"content": d.text})
            elif isinstance(d, ReasoningDelta):
                self.send({"reasoning_content": d.text})
            elif isinstance(d, ToolCallStart):
                nxt = deltas[k + 1] if k + 1 < len(deltas) else None
                args = nxt.text if isinstance(nxt, ToolCallArgs) and nxt.index == d.index else ""
                self.send({"tool_calls": [{"index": d.index, "id": d.id, "type": "function",
                                           "function": {"name": d.name, "arguments": args}}]})
                if args:
                    skip = k + 1  # sent with the start
            elif isinstance(d, ToolCallArgs):
                if d.text:
                    self.send({"tool_calls": [{"index": d.index, "function": {"arguments": d.text}}]})
            elif isinstance(d, FinishDelta):
                self.finish(d)

    def progress(self, d: ProgressDelta) -> None:
        if not self.choice.request.return_progress:
            return
        p = d.progress
        self.sent_role = True
        self.send({"role": "assistant", "content": None},
                  prompt_progress={"total": p.total, "cache": p.cache, "processed": p.processed,
                                   "time_ms": p.time_ms}, timings=p.timings())

    def finish(self, d: FinishDelta) -> None:
        extra = {"timings": d.finished.timings}
        if self.h.state.config.verbose or self.h.req.verbose:
            extra["__verbose"] = self.h.verbose_object(self.choice, stream=True)
        self.extra = {}
        self.send({}, d.reason, **extra)
