"""OpenAI `/v1/chat/completions` (alias `/chat/completions`) and `/apply-template`, CONTRACT §3."""

from __future__ import annotations

import time
from dataclasses import replace

from refserver.chat.formats import WHOLE_OUTPUT
from refserver.chat.grammars import TOOL_START, response_format_constraint, tools_constraint
from refserver.engine.types import GenerationRequest
from refserver.errors import InvalidRequest
from refserver.schemas.chat import ChatRequest
from refserver.schemas.common import encode_text
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
from refserver.stream.parsers import select_parsers

from .base import BaseHandler, log
from .completion import native_final
from .formats import completion_id, oai_logprob
from .state import SYSTEM_FINGERPRINT


def render_prompt(state, req: ChatRequest) -> str:
    """The chat template applied to the request's messages (and tools)."""
    if req.messages is None:
        raise InvalidRequest("'messages' is required")
    return state.template.render(req.messages, tools=req.callable_tools(),
                                 add_generation_prompt=req.add_generation_prompt,
                                 template_kwargs=req.chat_template_kwargs,
                                 continue_final_message=bool(req.continue_final_message))


def forbid_tool_calls(request: GenerationRequest, tokenizer) -> GenerationRequest:
    """tool_choice "none": the model may not open a tool call (a -inf bias on the marker
    when it is one token; otherwise the parser still keeps markup out of content)."""
    marker = tokenizer.encode(TOOL_START)
    if len(marker) != 1:
        return request
    sampling = replace(request.sampling, logit_bias=request.sampling.logit_bias + ((marker[0], float("-inf")),))
    return replace(request, sampling=sampling)


class ApplyTemplateHandler(BaseHandler):
    route = "/apply-template"

    async def post(self) -> None:
        req = self.parse_body(ChatRequest)
        req.check_tools(self.state.config.jinja)
        self.write_json({"prompt": render_prompt(self.state, req)})


class ChatHandler(BaseHandler):
    route = "/v1/chat/completions"
    sse_done = True

    async def post(self) -> None:
        state = self.state
        req = self.parse_body(ChatRequest)
        req.check_tools(state.config.jinja)
        req.check_common()
        text = render_prompt(state, req)
        if state.config.verbose:
            log.debug("request %s prompt: %r", self.request_id, text)
        prompt = encode_text(state.tokenizer, text, True, where="the rendered chat prompt")
        self.tool_format = state.template.tool_call_format
        self.use_tools = self.tool_format is not None and (
            req.callable_tools() is not None or self.tool_format in WHOLE_OUTPUT)
        constraint = self._constraint(req)
        n_probs, self.top_n = req.n_probs_requested()
        self.want_logprobs = bool(req.logprobs)
        n = req.n_choices(state.defaults)
        n_predict = req.requested_n_predict()
        reqs = [req.generation_request(list(prompt), state.tokenizer, state.defaults, n_predict=n_predict,
                                       constraint=constraint, n_probs=n_probs) for _ in range(n)]
        if req.tools and req.tool_choice == "none":
            reqs = [forbid_tool_calls(r, state.tokenizer) for r in reqs]
        self.req = req
        self.chat_id = completion_id("chatcmpl-")
        self.created = int(time.time())
        gen = self.start_generation(reqs, n=n, parsers=select_parsers(
            tools=self.use_tools, tool_format=self.tool_format or "hermes", tool_defs=req.tools,
            reasoning_format=req.reasoning_format))
        if req.stream:
            await self._stream(req, gen)
        else:
            await self._collect(gen)

    def _constraint(self, req: ChatRequest):
        rf = response_format_constraint(req.response_format, json_schema=req.json_schema,
                                        grammar=req.grammar or None)
        if req.callable_tools() is not None:
            tc = tools_constraint(req.tools, req.tool_choice or "auto", bool(req.parallel_tool_calls),
                                  token_names=self.state.tokenizer.added_token_names, fmt=self.tool_format)
            if rf is not None and tc is not None:
                raise InvalidRequest("'tools' cannot be combined with response_format, json_schema or grammar")
            return tc
        return rf

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
        if self.state.config.verbose:
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
                                   "time_ms": p.time_ms})

    def finish(self, d: FinishDelta) -> None:
        extra = {"timings": d.finished.timings}
        if self.h.state.config.verbose:
            extra["__verbose"] = self.h.verbose_object(self.choice, stream=True)
        self.extra = {}
        self.send({}, d.reason, **extra)
