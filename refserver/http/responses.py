"""OpenAI Responses API: `POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items`, `POST /v1/responses/{id}/cancel`.

A response is a chat generation (`chat_pipeline`) rendered by `ResponseRenderer`;
stored responses (`store`, default true as on OpenAI) live in the server's LRU
`ResponseStore`, and `previous_response_id` continues their conversation.  A
`background` response runs detached (`response_runs.BackgroundRun`): it is polled,
streamed again from any `sequence_number`, and cancelled through its id.
"""

from __future__ import annotations

from typing import Any

from refserver.errors import InvalidRequest
from refserver.schemas.common import parse_request
from refserver.schemas.responses import ResponsesRequest, input_messages
from refserver.stream.generation import ClientGone, Generation

from .base import BaseHandler, log
from .chat_pipeline import ChatGeneration, prepare_chat
from .offload import off_loop
from .response_runs import BackgroundRun, render
from .response_store import StoredResponse
from .responses_events import ResponseRenderer, new_id


def echo_fields(req: ResponsesRequest, temperature: float) -> dict[str, Any]:
    """The request fields a response object repeats."""
    fmt = (req.text or {}).get("format") or {"type": "text"}
    return {
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {}, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None},
        "store": req.store is not False, "temperature": temperature if req.temperature is None else req.temperature,
        "text": {"format": fmt}, "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
        "user": req.user, "background": bool(req.background), "top_logprobs": req.top_logprobs,
    }


def input_items(raw: str | list) -> list[dict]:
    """The request's input as stored items, each with an id (`/input_items`)."""
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = []
    for item in items:
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message":
            if isinstance(item.get("content"), str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": kind, "text": item["content"]}]
            item.setdefault("status", "completed")
        item.setdefault("id", new_id("msg_" if item["type"] == "message" else "item_"))
        out.append(item)
    return out


def output_message(response: dict) -> dict:
    """The assistant message a response adds to its conversation."""
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    for item in response["output"]:
        if item["type"] == "reasoning":
            msg["reasoning_content"] = "".join(c["text"] for c in item.get("content") or [])
        elif item["type"] == "message":
            msg["content"] += "".join(c["text"] for c in item["content"])
        elif item["type"] == "function_call":
            msg.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}})
    if msg.get("tool_calls") and not msg["content"]:
        msg["content"] = None
    return msg


class ResponsesHandler(BaseHandler):
    route = "/v1/responses"

    async def post(self) -> None:
        state = self.state
        req = await off_loop(lambda: parse_request(ResponsesRequest, self.json_body()))
        history = previous_messages(state, req.previous_response_id)
        chat = req.to_chat(history, state.config.strict)
        n_probs, top_n = req.logprobs_requested()
        chat_gen = await off_loop(prepare_chat, state, chat, n_probs=n_probs)
        renderer = ResponseRenderer(echo_fields(req, state.defaults.sampling.temperature), state.model.alias,
                                    top_n, "queued" if req.background else "in_progress")
        conversation = history + input_messages(req.input)
        if req.background:
            await self._background(req, chat_gen, renderer, conversation)
            return
        self.renderer = renderer
        gen = await self.start_generation(chat_gen.requests, parsers=chat_gen.parsers)
        if req.stream:
            self.sse_events(renderer.start())
            await render(gen, renderer, self.sse_events, self, state.config.sse_keepalive)
        else:
            renderer.start()
            await render(gen, renderer, lambda events: None)
        response = renderer.response()
        if req.store is not False:
            state.responses.put(StoredResponse(response, input_items(req.input),
                                               conversation + [output_message(response)]))
        if req.stream:
            self.finish()
        else:
            self.write_json(response)

    async def _background(self, req: ResponsesRequest, chat_gen: ChatGeneration, renderer: ResponseRenderer,
                          conversation: list[dict]) -> None:
        """Submit, store and answer at once (the queued object, or its events as they come:
        a client leaving that stream does not stop the run)."""
        state = self.state
        if state.responses.size <= 0:
            raise InvalidRequest("'background': true needs the response store, and this server runs with "
                                 "--responses-store-size 0", param="background")
        gen = await off_loop(Generation, state.engine, state.bridge, chat_gen.requests, parsers=chat_gen.parsers)
        self.n_prompt_tokens = gen.n_prompt_tokens
        entry = StoredResponse(renderer.response(), input_items(req.input), conversation)
        entry.run = run = BackgroundRun(gen, renderer, entry, output_message, state.active)
        state.responses.put(entry)
        if req.stream:
            await stream_run(self, run, -1)
        else:
            self.write_json(run.response())

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Once the stream is out, an error ends it with `response.failed`."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        renderer = getattr(self, "renderer", None)
        if not self._sse_started or self._client_gone or isinstance(exc, ClientGone) or renderer is None:
            super().send_error(status_code, **kwargs)
            return
        try:
            self.sse_events(renderer.fail(str(exc) if exc is not None else "generation failed"))
        except Exception:  # noqa: BLE001 - the connection is gone
            log.debug("request %s: could not write response.failed", self.request_id)
        self._finish_quietly()


def previous_messages(state, rid: str | None) -> list[dict]:
    """The conversation a `previous_response_id` continues (none without one)."""
    if rid is None:
        return []
    entry = state.responses.get(rid)
    status = entry.current()["status"]
    if status in ("queued", "in_progress"):
        raise InvalidRequest(f"previous_response_id: response {rid!r} is still {status}; wait until it has "
                             "completed (poll GET /v1/responses/{id})", param="previous_response_id")
    return entry.messages


async def stream_run(handler: BaseHandler, run: BackgroundRun, after: int) -> None:
    """A background run's events after sequence number `after` as SSE, until it ends."""
    handler.start_sse()
    async for batch in run.follow(after, handler.state.config.sse_keepalive):
        if batch:
            handler.sse_events(batch)
            await handler.drain()
        else:
            await handler.keepalive()
    handler.finish()


class StoredResponseHandler(BaseHandler):
    route = "/v1/responses/{id}"

    async def get(self, rid: str) -> None:
        """The stored response; with `stream=true`, a background response's events after
        `starting_after` (all of them without it), followed live while it generates."""
        entry = self.state.responses.get(rid)
        if self.get_query_argument("stream", "false").lower() != "true":
            self.write_json(entry.current())
            return
        if entry.run is None:
            raise InvalidRequest(f"response {rid!r} was not created with 'background': true; only background "
                                 "responses can be streamed again", param="stream")
        try:
            after = int(self.get_query_argument("starting_after", "-1"))
        except ValueError:
            raise InvalidRequest("'starting_after' must be an integer (an event's sequence_number)",
                                 param="starting_after") from None
        await stream_run(self, entry.run, after)

    async def delete(self, rid: str) -> None:
        entry = self.state.responses.get(rid)
        if entry.run is not None:
            entry.run.cancel()
        self.state.responses.delete(rid)
        self.write_json({"id": rid, "object": "response", "deleted": True})


class CancelResponseHandler(BaseHandler):
    route = "/v1/responses/{id}/cancel"

    async def post(self, rid: str) -> None:
        """Cancel a background response (OpenAI: only those can be); cancelling a cancelled
        one returns it again, an ended one is a 400."""
        entry = self.state.responses.get(rid)
        if entry.run is None:
            raise InvalidRequest("Cannot cancel a synchronous response.")
        status = entry.current()["status"]
        if status in ("completed", "incomplete", "failed"):
            raise InvalidRequest(f"Cannot cancel {'an' if status == 'incomplete' else 'a'} {status} response.")
        entry.run.cancel()
        self.write_json(entry.current())


class InputItemsHandler(BaseHandler):
    route = "/v1/responses/{id}/input_items"

    async def get(self, rid: str) -> None:
        """A page of the stored input items (`order`, `limit`, `after` as on OpenAI)."""
        items = self.state.responses.get(rid).input_items
        order = self.get_query_argument("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be 'asc' or 'desc'")
        items = items if order == "asc" else items[::-1]
        after = self.get_query_argument("after", None)
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidRequest(f"'after': no input item {after!r} in response {rid!r}")
            items = items[ids.index(after) + 1:]
        try:
            limit = int(self.get_query_argument("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise InvalidRequest("'limit' must be an integer from 1 to 100")
        page = items[:limit]
        self.write_json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})
