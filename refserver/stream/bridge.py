"""Carrying engine events from the engine thread to the handlers on the IOLoop.

The engine calls a request's sink on its own thread once per event.  Waking the loop for
each one costs a self-pipe write on the engine thread, a loop wake-up, and on a machine
whose cores all run the model, CPU taken from the model's threads (measured: about 3% of
decode speed on 2 cores for the wake-ups alone, more for the per-token `send()`s that
follow).  So the `EventBridge` works in two modes:

* idle: the first event wakes the loop at once (a request's first token, its end and
  its errors always do, so time to first token and the end of a stream are never held);
* busy: while tokens keep coming, the loop collects them every `interval` seconds
  instead, and each handler writes what it got and flushes once.  Events stay one SSE
  event per token; only their packets are grouped.  `--stream-interval-ms 0` sends every
  token as it comes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from refserver.engine.types import TokenOut


class Inbox:
    """One handler's pending (index, event) pairs; used on the loop thread only."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, Any]] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, index: int, event: Any) -> None:
        self.items.append((index, event))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until something is put (returns at once if something is there); raises
        `asyncio.TimeoutError` after `timeout` seconds (None: no limit)."""
        if self.items:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await self._waiter
            else:
                await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None


class EventBridge:
    """One per event loop; `sink()` makes the callbacks given to `engine.submit`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0):
        self._loop = loop
        self._interval = interval
        self._incoming: deque[tuple[Inbox, int, Any]] = deque()
        self._awake = False  # the loop will look at _incoming soon: no wake-up needed
        self._timer_armed = False  # loop thread only

    def sink(self, inbox: Inbox, index: int) -> Callable[[Any], None]:
        incoming = self._incoming
        first = True

        def sink(event: Any) -> None:  # runs on the engine thread
            nonlocal first
            incoming.append((inbox, index, event))
            urgent = first or not isinstance(event, TokenOut)
            first = False
            if urgent or not self._awake:
                self._awake = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: the server is exiting
                    pass

        return sink

    def _deliver(self) -> None:
        incoming = self._incoming
        while True:
            delivered = bool(incoming)
            while incoming:
                inbox, index, event = incoming.popleft()
                inbox.put(index, event)
            if delivered and self._interval > 0:
                if not self._timer_armed:  # busy: look again after the interval
                    self._timer_armed = True
                    self._loop.call_later(self._interval, self._tick)
                return
            if self._timer_armed:
                return
            # Idle.  Cleared before the re-check, so an event appended meanwhile is not
            # left behind: either it is seen below or its sink schedules a delivery.
            self._awake = False
            if not incoming:
                return
            self._awake = True

    def _tick(self) -> None:
        self._timer_armed = False
        self._deliver()
