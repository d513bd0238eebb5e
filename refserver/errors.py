"""Every error refserver reports, with the HTTP status and OpenAI-style type it maps to.

The HTTP layer turns any `RefserverError` into `{"error": {"code", "message", "type", ...}}`
(CONTRACT §6); nothing else needs to know about status codes.
"""

from __future__ import annotations


class RefserverError(Exception):
    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": self.type, **self.extra}}


class InvalidRequest(RefserverError):
    status, type = 400, "invalid_request_error"


class ContextExceeded(InvalidRequest):
    type = "exceed_context_size_error"

    def __init__(self, n_prompt_tokens: int, n_ctx: int):
        super().__init__(
            f"request ({n_prompt_tokens} tokens) exceeds the available context size "
            f"({n_ctx} tokens), try increasing it",
            n_prompt_tokens=n_prompt_tokens, n_ctx=n_ctx)


class AuthenticationError(RefserverError):
    status, type = 401, "authentication_error"


class NotFound(RefserverError):
    status, type = 404, "not_found_error"


class PayloadTooLarge(RefserverError):
    status, type = 413, "invalid_request_error"


class ServerError(RefserverError):
    status, type = 500, "server_error"


class NotSupported(RefserverError):
    status, type = 501, "not_supported_error"


class Unavailable(RefserverError):
    status, type = 503, "unavailable_error"
