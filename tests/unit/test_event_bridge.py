"""EventBridge: engine-thread sinks to handler inboxes, with grouped delivery while busy.

In-process (a real asyncio loop and a real producer thread), because what matters is
when events become visible on the loop: a request's first token and its end at once,
the tokens between them grouped every interval, order always kept.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from refserver.engine.types import Finished, TokenOut
from refserver.stream.bridge import EventBridge, Inbox

pytestmark = [pytest.mark.feature("streaming"), pytest.mark.extension, pytest.mark.profile("refserver")]


def token(i: int) -> TokenOut:
    return TokenOut(i, f"t{i}", None, None)


def finished() -> Finished:
    return Finished(stop_type="limit", stopping_word="", truncated=False, text="", tokens_predicted=6,
                    tokens_evaluated=1, tokens_cached=7, id_slot=0, timings={}, seed=1)


def run_producer(steps):
    """Run `steps` (callables) one after another on a separate thread."""
    t = threading.Thread(target=lambda: [s() for s in steps])
    t.start()
    t.join()


async def settle(seconds: float = 0.15) -> None:
    await asyncio.sleep(seconds)


def test_busy_stream_is_grouped_but_first_token_and_end_are_not():
    async def main():
        bridge = EventBridge(asyncio.get_running_loop(), interval=30.0)  # never ticks in this test
        inbox = Inbox()
        sink = bridge.sink(inbox, 0)
        run_producer([lambda: sink(token(0))])
        await settle()
        assert [e.token for _, e in inbox.items] == [0], "the first token must be delivered at once"
        run_producer([lambda i=i: sink(token(i)) for i in range(1, 6)])
        await settle()
        assert len(inbox.items) == 1, "tokens of a busy stream wait for the next interval"
        run_producer([lambda: sink(finished())])
        await settle()
        got = [e for _, e in inbox.items]
        assert [e.token for e in got[:-1]] == [0, 1, 2, 3, 4, 5]
        assert isinstance(got[-1], Finished), "the end is delivered at once, after every token"

    asyncio.run(main())


def test_interval_delivers_held_tokens_then_goes_idle():
    async def main():
        bridge = EventBridge(asyncio.get_running_loop(), interval=0.05)
        inbox = Inbox()
        sink = bridge.sink(inbox, 3)
        run_producer([lambda i=i: sink(token(i)) for i in range(4)])
        await settle(0.3)
        assert [(i, e.token) for i, e in inbox.items] == [(3, 0), (3, 1), (3, 2), (3, 3)]
        inbox.items.clear()
        await settle(0.2)  # idle again: a new request's first token goes at once
        other = Inbox()
        run_producer([lambda: bridge.sink(other, 0)(token(9))])
        await asyncio.wait_for(other.wait(None), 0.1)
        assert [e.token for _, e in other.items] == [9]

    asyncio.run(main())


def test_zero_interval_wakes_for_every_token_and_keeps_order_across_inboxes():
    async def main():
        bridge = EventBridge(asyncio.get_running_loop(), interval=0.0)
        a, b = Inbox(), Inbox()
        sa, sb = bridge.sink(a, 0), bridge.sink(b, 1)
        steps = []
        for i in range(200):
            steps += [lambda i=i: sa(token(i)), lambda i=i: sb(token(i))]
        run_producer(steps)
        await settle()
        assert [e.token for _, e in a.items] == list(range(200))
        assert [(i, e.token) for i, e in b.items] == [(1, t) for t in range(200)]

    asyncio.run(main())


def test_inbox_wait_times_out_and_returns_on_put():
    async def main():
        inbox = Inbox()
        with pytest.raises(asyncio.TimeoutError):
            await inbox.wait(0.01)
        asyncio.get_running_loop().call_later(0.01, inbox.put, 0, token(1))
        await inbox.wait(1.0)
        assert len(inbox.items) == 1

    asyncio.run(main())
