"""Anthropic Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`,
answered in Anthropic's own shapes, errors included:
`{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}`.

A message is a chat generation (`chat_pipeline`) rendered by `MessageRenderer`.  The
stream's events carry `event:` names (the SDK dispatches on them); while the request waits
or pre-fills, `ping` events keep the connection alive.  `x-api-key` authenticates (as
`Authorization: Bearer` does); `anthropic-version` is accepted whatever its value.
"""

from __future__ import annotations

from typing import Any

from refserver.errors import RefserverError
from refserver.schemas.common import encode_text, parse_request
from refserver.schemas.messages import CountTokensRequest, MessagesRequest
from refserver.stream.deltas import FinishDelta
from refserver.stream.generation import ClientGone

from .base import BaseHandler, as_refserver_error, dumps, log
from .chat_pipeline import prepare_chat, render_prompt
from .messages_events import MessageRenderer
from .offload import off_loop

# refserver's error type → Anthropic's (status, type)
_ANTHROPIC_ERRORS = {
    401: (401, "authentication_error"), 403: (403, "permission_error"), 404: (404, "not_found_error"),
    413: (413, "request_too_large"), 429: (429, "rate_limit_error"), 503: (529, "overloaded_error"),
}


def anthropic_error(err: RefserverError) -> tuple[int, dict]:
    """(status, body) of an error in Anthropic's shape."""
    status, kind = _ANTHROPIC_ERRORS.get(err.status, (err.status, "invalid_request_error"))
    if err.status >= 500 and err.status != 503:
        status, kind = err.status, "api_error"
    return status, {"type": "error", "error": {"type": kind, "message": err.message}}


class AnthropicHandler(BaseHandler):
    """Anthropic's error shape, in a JSON body or as the stream's `error` event."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        err = as_refserver_error(kwargs.get("exc_info", (None, None, None))[1], status_code)
        status, body = anthropic_error(err)
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if "retry_after" in err.extra:
            self.set_header("Retry-After", str(err.extra["retry_after"]))
        self.finish(dumps(body))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not self._sse_started or self._client_gone or isinstance(exc, ClientGone):
            super().send_error(status_code, **kwargs)
            return
        try:
            self.sse_events([anthropic_error(as_refserver_error(exc, status_code))[1]])
        except Exception:  # noqa: BLE001 - the connection is gone
            log.debug("request %s: could not write the error event", self.request_id)
        self._finish_quietly()

    async def keepalive(self) -> None:
        """The keepalive of an Anthropic stream is a `ping` event."""
        self.sse_events([{"type": "ping"}])
        await self.drain()


class MessagesHandler(AnthropicHandler):
    route = "/v1/messages"

    async def post(self) -> None:
        state = self.state
        req = await off_loop(lambda: parse_request(MessagesRequest, self.json_body()))
        chat = await off_loop(lambda: prepare_chat(state, req.to_chat(state.config.strict)))
        renderer = MessageRenderer(req.model, len(chat.requests[0].prompt))
        gen = await self.start_generation(chat.requests, parsers=chat.parsers)
        emit = self.sse_events if req.stream else (lambda events: None)
        emit(renderer.start())
        async for _choice, deltas in (self.stream_deltas() if req.stream else gen.stream()):
            emit(renderer.deltas(deltas))
            if isinstance(deltas[-1], FinishDelta):
                fin = deltas[-1].finished
                emit(renderer.finish(fin.stop_type, fin.stopping_word, fin.tokens_predicted,
                                     int(fin.timings.get("cache_n", 0))))
        if req.stream:
            self.finish()
        else:
            self.write_json(renderer.message())


class CountTokensHandler(AnthropicHandler):
    route = "/v1/messages/count_tokens"

    async def post(self) -> None:
        self.write_json({"input_tokens": await off_loop(self.count)})

    def count(self) -> int:
        """The rendered prompt's token count (on a worker: rendering and tokenizing)."""
        req = parse_request(CountTokensRequest, self.json_body())
        chat = req.to_chat(self.state.config.strict)
        chat.check_tools(self.state.config.jinja)
        text = render_prompt(self.state, chat)
        return len(encode_text(self.state.tokenizer, text, True, where="the rendered chat prompt"))
