"""`Generation`: one HTTP request's engine requests, from submission to their last event.

It holds what the handler used to: the inbox the engine's events arrive in (through the
server's `EventBridge`), the engine handles, which choices are still open and which still
wait for their first token, and cancellation.  It knows nothing of HTTP: a handler hands
`stream()` / `events()` a `Transport` (drain what was written; send a keepalive).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from refserver.engine.types import Failed, Finished, GenerationRequest, TokenOut
from refserver.errors import RefserverError, ServerError, Unavailable

from .bridge import EventBridge, Inbox
from .choice import ChoiceResult, ChoiceStream, Usage, usage
from .deltas import Delta
from .parsers import ParserChain

_SHUTDOWN = -1  # inbox index: the server is stopping
_WAKE = -2  # inbox index: wake the consumer (its client has gone)


class ClientGone(Exception):
    """The client closed the connection; the consumer ends quietly."""


class Transport(Protocol):
    """What a streaming consumer offers `Generation`: sending what it wrote, keepalives."""

    last_write: float  # time.monotonic() of the last bytes sent

    async def drain(self) -> None:
        """Send everything written so far (called whenever no event is pending); raises
        `ClientGone` when the client has left."""

    async def keepalive(self) -> None:
        """Send a keepalive (an SSE comment) and drain."""


class Generation:
    """Submits `requests` to the engine at once (all or none) and yields their events.

    `parsers` makes each choice's `ParserChain` (see `parsers.select_parsers`); `n` is the
    number of choices per prompt (consecutive requests of one prompt share a usage group).
    `submit` raises the engine's synchronous errors (`ContextExceeded`, `InvalidRequest`,
    `Unavailable`) before anything is streamed.
    """

    def __init__(self, engine: Any, bridge: EventBridge, requests: list[GenerationRequest], *, n: int = 1,
                 parsers: Callable[[], ParserChain] | None = None):
        self.requests = requests
        self.choices = [ChoiceStream(i, r, parsers() if parsers else None, group=i // max(n, 1))
                        for i, r in enumerate(requests)]
        self.inbox = Inbox()
        self.gone = False
        handles: list = []
        try:
            for i, req in enumerate(requests):
                handles.append(engine.submit(req, bridge.sink(self.inbox, i)))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        self.handles = list(handles)  # kept after cancel: `id_slot` is read from them
        self._handles = handles
        self._open = set(range(len(requests)))
        self._pending_first = set(self._open)

    # ------------------------------------------------------------------ counts
    @property
    def n_prompt_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def n_predicted_tokens(self) -> int:
        return sum(c.finished.tokens_predicted for c in self.choices if c.finished is not None)

    def usage(self) -> Usage:
        return usage(self.choices)

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        """Stop every request still running (idempotent)."""
        for h in self._handles:
            h.cancel()
        self._handles = []

    def client_gone(self) -> None:
        """The client left: cancel, and wake the consumer so it ends with `ClientGone`."""
        self.gone = True
        self.cancel()
        self.inbox.put(_WAKE, None)

    def shutdown(self) -> None:
        """The server's grace ran out: the consumer ends with `Unavailable`."""
        self.inbox.put(_SHUTDOWN, None)

    # ------------------------------------------------------------------ consuming
    async def stream(self, transport: Transport | None = None,
                     keepalive: float | None = None) -> AsyncIterator[tuple[ChoiceStream, list[Delta]]]:
        """(choice, deltas) per engine event until every choice has finished."""
        async for i, event in self.events(transport, keepalive):
            choice = self.choices[i]
            if choice.id_slot < 0:
                choice.id_slot = self.handles[i].id_slot
            yield choice, choice.feed(event)

    async def collect(self) -> list[ChoiceResult]:
        """Non-streamed: the same deltas, only folded (`ChoiceResult`)."""
        async for _choice, _deltas in self.stream():
            pass
        return [c.result for c in self.choices]

    async def events(self, transport: Transport | None = None,
                     keepalive: float | None = None) -> AsyncIterator[tuple[int, Any]]:
        """(index, Progress | TokenOut | Finished) until every request has finished.

        A `Failed` event raises its error (a `RefserverError`).  With a transport, written
        output is drained whenever no event is pending; with `keepalive` seconds too, a
        keepalive goes out whenever nothing was sent for that long while some request still
        waits for its first token (queued or pre-filling).
        """
        items = self.inbox.items
        while self._open:
            if self.gone:
                raise ClientGone()
            if not items:
                if transport is not None:
                    await transport.drain()
                    if items:
                        continue
                await self._wait(transport, keepalive)
                continue
            index, event = items.popleft()
            if index == _WAKE:
                continue
            if index == _SHUTDOWN:
                self.cancel()
                raise Unavailable("Server is shutting down")
            if isinstance(event, Failed):
                self._open.discard(index)
                self.cancel()
                err = event.error
                raise err if isinstance(err, RefserverError) else ServerError(f"generation failed: {err}")
            if isinstance(event, (TokenOut, Finished)):
                self._pending_first.discard(index)
            if isinstance(event, Finished):
                self._open.discard(index)
            yield index, event
        self._handles = []

    async def _wait(self, transport: Transport | None, keepalive: float | None) -> None:
        timeout = None
        if transport is not None and keepalive is not None and self._pending_first:
            timeout = max(0.0, transport.last_write + keepalive - time.monotonic())
        try:
            await self.inbox.wait(timeout)
        except asyncio.TimeoutError:
            await transport.keepalive()
