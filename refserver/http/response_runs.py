"""Running a Response: the one loop that turns a generation's deltas into Responses events
(`render`), and background responses (`background: true`) that run detached from the
request that created them.

A `BackgroundRun` keeps every event it rendered, in `sequence_number` order, so a client
can poll the response object (`GET /v1/responses/{id}`), follow its events from any
point (a `background` + `stream` request, `GET ...?stream=true&starting_after=N`), or
cancel it (`POST .../cancel`, which frees the engine slot at the next step).  A client
that leaves a background stream cancels nothing.  The run is in the server's `active` set
while it generates, so a shutdown waits for it (within `--shutdown-grace`) and then ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from refserver.errors import RefserverError
from refserver.stream.deltas import FinishDelta
from refserver.stream.generation import ClientGone, Generation, Transport

from .response_store import StoredResponse
from .responses_events import FINAL, ResponseRenderer, response_usage

log = logging.getLogger("refserver.http")

Emit = Callable[[list[dict]], None]


async def render(gen: Generation, renderer: ResponseRenderer, emit: Emit, transport: Transport | None = None,
                 keepalive: float | None = None) -> None:
    """Every event of `gen` (one choice) through `renderer`, each batch given to `emit`;
    with a transport, written events are drained as in any stream."""
    async for choice, deltas in gen.stream(transport, keepalive):
        emit(renderer.deltas(deltas))
        if isinstance(deltas[-1], FinishDelta):
            fin = deltas[-1].finished
            usage = response_usage(fin.tokens_evaluated, int(fin.timings.get("cache_n", 0)),
                                   fin.tokens_predicted, choice.result.reasoning_tokens)
            emit(renderer.finish(fin.stop_type, usage))


class BackgroundRun:
    """A background response generating on the IOLoop; `entry` is its store entry, whose
    conversation gets the output message when it ends."""

    def __init__(self, gen: Generation, renderer: ResponseRenderer, entry: StoredResponse,
                 on_output: Callable[[dict], dict], active: set):
        self.gen, self.renderer, self.entry = gen, renderer, entry
        self.events: list[dict] = []  # events[i]["sequence_number"] == i
        self._changed = asyncio.Event()
        self._on_output = on_output  # the final response -> its assistant message
        self._active = active
        active.add(self)
        self.emit(renderer.start())
        self.task = asyncio.ensure_future(self._run())

    @property
    def done(self) -> bool:
        return self.renderer.status in FINAL

    def emit(self, events: list[dict]) -> None:
        self.events.extend(events)
        self._changed.set()

    def response(self) -> dict:
        """The response object now: "queued" until the engine gave it a slot."""
        obj = self.renderer.response()
        if obj["status"] == "queued" and any(h.id_slot >= 0 for h in self.gen.handles):
            obj["status"] = "in_progress"
        return obj

    async def _run(self) -> None:
        try:
            await render(self.gen, self.renderer, self.emit)
        except ClientGone:  # cancelled: `cancel` rendered it
            pass
        except RefserverError as exc:
            self.emit(self.renderer.fail(exc.message))
        except Exception as exc:  # a background run has no client to raise to
            log.error("background response %s failed", self.renderer.id, exc_info=exc)
            self.emit(self.renderer.fail(f"generation failed: {exc}"))
        finally:
            self.gen.cancel()
            self._active.discard(self)
            response = self.renderer.response()
            if response["status"] in ("completed", "incomplete"):
                self.entry.messages.append(self._on_output(response))
            self._changed.set()

    def cancel(self) -> None:
        """Stop generating (idempotent; nothing happens once the response has ended)."""
        if not self.done:
            self.emit(self.renderer.cancel())
            self.gen.client_gone()  # cancels the engine requests and wakes `_run`

    def abort_for_shutdown(self) -> None:
        """The server's grace ran out: the run fails with "Server is shutting down"."""
        self.gen.shutdown()

    async def follow(self, after: int, keepalive: float | None = None) -> AsyncIterator[list[dict]]:
        """The events after sequence number `after`, as they come, until the run has ended
        (an empty batch each `keepalive` seconds without any)."""
        sent = max(after + 1, 0)
        while True:
            if sent < len(self.events):
                batch, sent = self.events[sent:], len(self.events)
                yield batch
                continue
            if self.task.done():
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), keepalive)
            except asyncio.TimeoutError:
                yield []
