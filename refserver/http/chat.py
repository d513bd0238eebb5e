"""OpenAI `/v1/chat/completions` (alias `/chat/completions`) and `/apply-template`, CONTRACT §3."""

from __future__ import annotations

import time
from dataclasses import replace

from refserver.chat.formats import tool_call_parser
from refserver.chat.grammars import TOOL_START, response_format_constraint, tools_constraint
from refserver.chat.tool_calls import ContentDelta, finish_reason_for
from refserver.engine.types import Finished, GenerationRequest, Progress, TokenOut
from refserver.errors import InvalidRequest
from refserver.schemas.chat import ChatRequest
from refserver.schemas.common import encode_text

from .base import BaseHandler, log
from .completion import native_final
from .formats import ChoiceState, choice_states, completion_id, oai_logprob, usage
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
        self.use_tools = req.callable_tools() is not None and self.tool_format is not None
        constraint = self._constraint(req)
        n_probs, self.top_n = req.n_probs_requested()
        self.want_logprobs = bool(req.logprobs)
        n = req.n_choices(state.defaults)
        n_predict = req.chat_n_predict(state.defaults)
        reqs = [req.generation_request(list(prompt), state.tokenizer, state.defaults, n_predict=n_predict,
                                       constraint=constraint, n_probs=n_probs) for _ in range(n)]
        if req.tools and req.tool_choice == "none":
            reqs = [forbid_tool_calls(r, state.tokenizer) for r in reqs]
        self.req = req
        self.reqs = reqs
        self.chat_id = completion_id("chatcmpl-")
        self.created = int(time.time())
        choices = choice_states(reqs, n)
        self.submit(reqs)
        if req.stream:
            await self._stream(req, choices)
        else:
            await self._collect(req, choices)

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

    def new_parser(self):
        """The tool-call parser of the template's format, for one choice."""
        return tool_call_parser(self.tool_format, self.req.tools)

    def envelope(self, choices: list[dict], chunk: bool) -> dict:
        return {"choices": choices, "created": self.created, "id": self.chat_id,
                "model": self.state.model.alias, "system_fingerprint": SYSTEM_FINGERPRINT,
                "object": "chat.completion.chunk" if chunk else "chat.completion"}

    def verbose_object(self, choice: ChoiceState, stream: bool) -> dict:
        return native_final(self.state, self.req, self.reqs[choice.index], choice, stream)

    # ------------------------------------------------------------------ non-streamed
    async def _collect(self, req: ChatRequest, choices: list[ChoiceState]) -> None:
        await self.collect(choices)
        out_choices = []
        for c in choices:
            message: dict = {"role": "assistant", "content": c.content}
            calls = []
            if self.use_tools:
                content, calls = self.new_parser().parse(c.content)
                message["content"] = content
                if calls:
                    message["tool_calls"] = [call.to_dict() for call in calls]
            entry = {"finish_reason": finish_reason_for(c.finished.stop_type, bool(calls)), "index": c.index,
                     "message": message}
            if self.want_logprobs:
                entry["logprobs"] = {"content": [oai_logprob(p, self.top_n) for p in c.probs]}
            out_choices.append(entry)
        out = self.envelope(out_choices, chunk=False)
        out["usage"] = usage(choices)
        out["timings"] = choices[-1].finished.timings
        if self.state.config.verbose:
            out["__verbose"] = self.verbose_object(choices[0], stream=False)
        self.write_json(out)

    # ------------------------------------------------------------------ streamed
    async def _stream(self, req: ChatRequest, choices: list[ChoiceState]) -> None:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        parsers = [self.new_parser() if self.use_tools else None for _ in choices]
        pending_probs: list[list] = [[] for _ in choices]
        last_timings: dict = {}

        def send(i: int, delta: dict, finish_reason=None, **extra) -> None:
            entry = {"finish_reason": finish_reason, "index": i, "delta": delta}
            if self.want_logprobs and "content" in delta and delta["content"] is not None:
                entry["logprobs"] = {"content": [oai_logprob(p, self.top_n) for p in pending_probs[i]]}
                pending_probs[i] = []
            chunk = self.envelope([entry], chunk=True)
            chunk.update(extra)
            self.sse_send(chunk)

        def send_deltas(i: int, deltas: list, **extra) -> None:
            for d in deltas:
                if isinstance(d, ContentDelta):
                    if d.text:
                        send(i, {"content": d.text}, **extra)
                else:
                    send(i, {"tool_calls": [d.to_dict()]}, **extra)

        def send_text(i: int, text: str, **extra) -> None:
            parser = parsers[i]
            send_deltas(i, parser.feed(text) if parser is not None else [ContentDelta(text)], **extra)

        async for i, event in self.events(keepalive=True):
            c = choices[i]
            if isinstance(event, Progress):
                if self.reqs[i].return_progress:
                    c.sent_role = True
                    send(i, {"role": "assistant", "content": None},
                         prompt_progress={"total": event.total, "cache": event.cache,
                                          "processed": event.processed, "time_ms": event.time_ms})
                continue
            if not c.sent_role:
                c.sent_role = True
                send(i, {"role": "assistant", "content": None})
            if isinstance(event, TokenOut):
                c.add(event)
                if event.probs is not None and self.want_logprobs:
                    pending_probs[i].append(event.probs)
                extra = {"timings": event.timings} if event.timings else {}
                if event.text:
                    send_text(i, event.text, **extra)
                if event.timings:
                    last_timings = event.timings
            elif isinstance(event, Finished):
                c.finish(event)
                self.n_predicted_tokens += event.tokens_predicted
                if event.text:
                    send_text(i, event.text)
                if parsers[i] is not None:
                    send_deltas(i, parsers[i].finish())
                has_calls = bool(parsers[i] is not None and parsers[i].calls)
                extra = {"timings": event.timings}
                if self.state.config.verbose:
                    extra["__verbose"] = self.verbose_object(c, stream=True)
                send(i, {}, finish_reason_for(event.stop_type, has_calls), **extra)
                last_timings = event.timings
        if include_usage:
            tail = self.envelope([], chunk=True)
            tail["usage"] = usage(choices)
            tail["timings"] = last_timings
            self.sse_send(tail)
        self.sse_done_line()
        self.finish()
