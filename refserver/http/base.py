"""BaseHandler: the one error path, JSON and SSE writing, API keys, CORS, request logs,
and the HTTP side of a `refserver.stream.Generation` (the handler is its `Transport`).

SSE events are written as they come and flushed once no engine event is pending, so a
burst (speculative tokens, n choices) leaves in one `send()`.  A generation is cancelled
when the client goes (`on_connection_close`, or a flush failing with `StreamClosedError`)
and whenever the handler ends before it finished.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import tornado.web
from tornado.iostream import StreamClosedError

from refserver.engine.types import GenerationRequest
from refserver.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RefserverError,
    ServerError,
    Unavailable,
)
from refserver.schemas.common import RequestModel, parse_request
from refserver.stream.choice import ChoiceStream
from refserver.stream.deltas import Delta
from refserver.stream.generation import ClientGone, Generation
from refserver.stream.parsers import ParserChain

from .offload import loads_yielding, off_loop
from .state import AppState

log = logging.getLogger("refserver.http")

class MethodNotAllowed(RefserverError):
    status, type = 405, "invalid_request_error"


# allow_nan=False: a non-finite number anywhere in a response is a bug to surface as a 500,
# never `Infinity` or `NaN` in a body that JSON parsers reject.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_JSON_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (the encoders are built once: this runs per token).

    Client strings may hold lone surrogates (`"\\ud800"` is legal JSON) and are echoed back
    (stop strings, rendered templates); such text cannot be encoded as UTF-8, so it is
    written with ASCII escapes instead of failing the response with a 500.
    """
    try:
        return _JSON.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        return _JSON_ASCII.encode(obj).encode("ascii")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _is_local_origin(origin: str) -> bool:
    """An origin on this machine (llama.cpp's `--cors-origins localhost`): any scheme and port."""
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return host in ("localhost", "127.0.0.1", "::1") or bool(host and host.endswith(".localhost"))


def as_refserver_error(exc: BaseException | None, status: int) -> RefserverError:
    if isinstance(exc, RefserverError):
        return exc
    if isinstance(exc, tornado.web.HTTPError) or exc is None:
        code = exc.status_code if exc is not None else status
        reason = (exc.log_message if exc is not None and exc.log_message else None)
        if code == 404:
            return NotFound(reason or "File Not Found")
        if code == 405:
            return MethodNotAllowed(reason or "Method not allowed")
        if 400 <= code < 500:
            err = InvalidRequest(reason or "Bad request")
            err.status = code
            return err
        return ServerError(reason or "Internal server error")
    return ServerError(f"internal server error ({type(exc).__name__}: {exc})")


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    route = "other"  # label for logs and metrics
    public = False  # reachable without an API key
    needs_model = True  # answers 503 while the model loads
    sse_done = False  # end streams with `data: [DONE]` (the /v1 endpoints)
    log_level = logging.INFO  # of the one line each request logs when it ends

    def initialize(self, state: AppState) -> None:
        self.state = state
        self._t0 = time.monotonic()
        self._body = bytearray()
        self._body_too_large = False
        self._sse_started = False
        self._client_gone = False
        self._unflushed = False
        self.generation: Generation | None = None
        self.last_write = time.monotonic()
        self.n_prompt_tokens = 0
        self._set_cors()

    # ------------------------------------------------------------------ headers
    def set_default_headers(self) -> None:
        if not hasattr(self, "request_id"):
            incoming = self.request.headers.get("X-Request-Id", "")
            ok = 0 < len(incoming) <= 64 and all(c.isalnum() or c in "-_." for c in incoming)
            self.request_id = incoming if ok else secrets.token_hex(8)
        self.set_header("X-Request-Id", self.request_id)
        self.set_header("Server", "refserver")
        if hasattr(self, "state"):
            self._set_cors()

    def _set_cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if not origin:
            return
        allowed = self.state.config.cors_origins
        if "*" in allowed or origin in allowed or "localhost" in allowed and _is_local_origin(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    def options(self, *args, **kwargs) -> None:
        """CORS preflight, as llama.cpp answers it."""
        self.set_header("Access-Control-Allow-Credentials", "true")
        self.set_header("Access-Control-Allow-Methods", self.state.config.cors_methods)
        self.set_header("Access-Control-Allow-Headers", self.state.config.cors_headers)
        self.set_status(200)
        self.finish()

    # ------------------------------------------------------------------ checks
    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        limit = int(self.state.config.max_body_mb * 1024 * 1024)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._body_too_large = True  # the body is read and dropped; the method answers 413
        if not self.public and self.state.config.api_keys:
            self._check_api_key()
        if self.needs_model:
            self.check_ready()

    def check_ready(self) -> None:
        """503 while the model loads or the server stops."""
        if not self.state.ready:
            raise Unavailable("Loading model" if self.state.status == "loading" else "Server is shutting down")

    def _check_api_key(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else self.request.headers.get("X-Api-Key", "")
        given = key.encode()
        if not any(hmac.compare_digest(given, k.encode()) for k in self.state.config.api_keys):
            raise AuthenticationError("Invalid API Key")

    def data_received(self, chunk: bytes) -> None:
        if self._body_too_large:
            return
        self._body += chunk
        if len(self._body) > self.state.config.max_body_mb * 1024 * 1024:
            self._body_too_large = True
            self._body = bytearray()

    def parse_body(self, cls: type[RequestModel]) -> RequestModel:
        """The JSON body validated as `cls` (unknown fields are an error with --strict)."""
        return parse_request(cls, self.json_body(), self.state.config.strict)

    def json_body(self) -> Any:
        if self._body_too_large:
            raise PayloadTooLarge(f"request body is larger than {self.state.config.max_body_mb:g} MB "
                                  "(--max-body-mb)")
        if not self._body.strip():
            raise InvalidRequest("the request body is empty; send a JSON object")
        try:
            return loads_yielding(self._body.decode("utf-8"), _reject_constant)
        except UnicodeDecodeError:
            raise InvalidRequest("the request body is not valid UTF-8") from None
        except RecursionError:
            raise InvalidRequest("the request body is nested too deeply") from None
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None

    # ------------------------------------------------------------------ writing
    def write_json(self, obj: Any, status: int = 200) -> None:
        """Finish with a JSON body; `obj` may be a list (Tornado's write() refuses lists), or
        bytes `dumps` made already (off the loop, for a big body)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(obj if isinstance(obj, bytes) else dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = as_refserver_error(exc, status_code)
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(err, Unavailable) and "retry_after" in err.extra:
            self.set_header("Retry-After", str(err.extra["retry_after"]))
        self.finish(dumps(err.to_dict()))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClientGone) or (self._sse_started and self._client_gone):
            self._finish_quietly()
            return
        if self._sse_started:
            # Headers are out: the error becomes the stream's last event.
            err = as_refserver_error(exc, status_code)
            try:
                self.sse_send(err.to_dict())
                if self.sse_done:
                    self.sse_done_line()
            except Exception:  # noqa: BLE001
                log.debug("request %s: could not write the error event", self.request_id)
            self._finish_quietly()
            return
        super().send_error(status_code, **kwargs)

    def _finish_quietly(self) -> None:
        if not self._finished:
            try:
                self.finish()
            except Exception:  # noqa: BLE001 - the connection is gone
                log.debug("request %s: finish on a closed connection", self.request_id)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ClientGone):
            return
        if isinstance(value, (RefserverError, tornado.web.HTTPError)):
            status = getattr(value, "status", getattr(value, "status_code", 0))
            log.debug("request %s: %s %s", self.request_id, status, value)
            return
        log.error("request %s failed on %s %s", self.request_id, self.request.method, self.request.path,
                  exc_info=(typ, value, tb))

    def on_finish(self) -> None:
        self.cancel_generation()
        self.state.active.discard(self)
        ms = (time.monotonic() - self._t0) * 1000
        status = self.get_status()
        path = self.request.path
        path = path if len(path) <= 200 else path[:200] + "..."  # a 60 kB URL makes no 60 kB log line
        log.log(self.log_level,
                "request id=%s method=%s route=%s status=%d prompt_tokens=%d predicted_tokens=%d ms=%.1f",
                self.request_id, self.request.method, path, status,
                self.n_prompt_tokens, self.generation.n_predicted_tokens if self.generation else 0, ms)
        if self.state.metrics is not None:
            self.state.metrics.observe_request(self.route, status, ms / 1000)

    # ------------------------------------------------------------------ SSE
    def start_sse(self) -> None:
        if not self._sse_started:
            self._sse_started = True
            self.set_status(200)
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")

    async def _flush(self) -> None:
        try:
            await self.flush()
        except StreamClosedError:
            self._gone()
            raise ClientGone() from None
        self._unflushed = False
        self.last_write = time.monotonic()

    def sse_send(self, obj: Any) -> None:
        """Write one `data:` event; `events()` flushes once no event is pending."""
        self.start_sse()
        self.write(b"data: " + dumps(obj) + b"\n\n")
        self._unflushed = True

    def sse_events(self, events: list[dict]) -> None:
        """Write typed events (`event: <type>` + `data:`), as the Responses and Anthropic
        streams carry them."""
        self.start_sse()
        for obj in events:
            self.write(b"event: " + obj["type"].encode() + b"\ndata: " + dumps(obj) + b"\n\n")
        self._unflushed = True

    def sse_done_line(self) -> None:
        self.write("data: [DONE]\n\n")
        self._unflushed = True

    async def sse_comment(self, text: str = "keepalive") -> None:
        self.start_sse()
        self.write(f": {text}\n\n")
        await self._flush()

    # ------------------------------------------------------------------ generation
    async def start_generation(self, requests: list[GenerationRequest], *, n: int = 1,
                               parsers: Callable[[], ParserChain] | None = None) -> Generation:
        """Submit every request to the engine (all or none; off the loop: it compiles
        grammars and builds samplers); see `refserver.stream`."""
        gen = await off_loop(Generation, self.state.engine, self.state.bridge, requests, n=n, parsers=parsers)
        if self._client_gone:  # it left while the requests were being submitted
            gen.cancel()
            raise ClientGone()
        self.generation = gen
        self.n_prompt_tokens = gen.n_prompt_tokens
        self.state.active.add(self)
        return gen

    def stream_deltas(self) -> AsyncIterator[tuple[ChoiceStream, list[Delta]]]:
        """The generation's (choice, deltas), this handler draining its SSE writes and
        sending keepalives while a choice waits for its first token."""
        return self.generation.stream(self, self.state.config.sse_keepalive)

    async def drain(self) -> None:
        """`Transport.drain`: flush what was written, in one `send()`."""
        if self._unflushed:
            await self._flush()

    async def keepalive(self) -> None:
        """`Transport.keepalive`."""
        await self.sse_comment("keepalive")

    def cancel_generation(self) -> None:
        if self.generation is not None:
            self.generation.cancel()

    def _gone(self) -> None:
        self._client_gone = True
        if self.generation is not None:
            self.generation.client_gone()

    def on_connection_close(self) -> None:
        self._gone()

    def abort_for_shutdown(self) -> None:
        """Called by the server when --shutdown-grace has run out."""
        if self.generation is not None:
            self.generation.shutdown()
