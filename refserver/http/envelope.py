"""JSON in and out of the HTTP layer, and the error envelope: what any exception becomes
before it reaches the client (`{"error": {"code", "message", "type"}}`, CONTRACT §6)."""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from refserver.errors import InvalidRequest, NotFound, RefserverError, ServerError


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


def reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str) -> Any:
    """A request body: `NaN` / `Infinity` are not JSON and are refused (ValueError)."""
    return json.loads(text, parse_constant=reject_constant)


def as_refserver_error(exc: BaseException | None, status: int) -> RefserverError:
    """Whatever ended a request, as the error the client sees in the envelope."""
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
