"""The streaming core (`refserver.stream`) without a server: fake engine events in, deltas
and folded results out.  What matters: one logprob-carrying `TokenDelta` per generated
token (EOS and tool-call markup included), tool calls parsed the same whether the text
comes in one piece or token by token, and `collect()` being the fold of `stream()`."""

from __future__ import annotations

import asyncio
import json

import pytest

from refserver.engine.types import Failed, Finished, GenerationRequest, TokenOut, TokenProb, TokenProbs
from refserver.errors import InvalidRequest, ServerError
from refserver.stream.bridge import EventBridge
from refserver.stream.choice import ChoiceStream, usage
from refserver.stream.deltas import (
    FinishDelta,
    TextDelta,
    TokenDelta,
    ToolCallArgs,
    ToolCallStart,
    finish_reason_for,
)
from refserver.stream.generation import ClientGone, Generation
from refserver.stream.parsers import ParserChain, select_parsers

pytestmark = [pytest.mark.feature("streaming"), pytest.mark.extension, pytest.mark.profile("refserver")]

EOS = 2
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def probs(token: int) -> TokenProbs:
    p = TokenProb(token, f"t{token}", [], -0.5)
    return TokenProbs(p, [p])


def finished(n: int, stop_type: str = "eos", prompt: int = 3, cache_n: int = 0, text: str = "") -> Finished:
    return Finished(stop_type=stop_type, stopping_word="", truncated=False, text=text, tokens_predicted=n,
                    tokens_evaluated=prompt, tokens_cached=prompt + n, id_slot=0,
                    timings={"cache_n": cache_n}, seed=1)


def token_events(pieces: list[str], stop_type: str = "eos") -> list:
    """A token per piece (ids 10, 11, ...), then EOS with empty text, then Finished."""
    events = [TokenOut(10 + i, piece, probs(10 + i)) for i, piece in enumerate(pieces)]
    if stop_type == "eos":
        events.append(TokenOut(EOS, "", probs(EOS)))
    return events + [finished(len(events), stop_type)]


def run_choice(events: list, tools: bool) -> tuple[ChoiceStream, list]:
    choice = ChoiceStream(0, GenerationRequest([1, 2, 3]), select_parsers(tools=tools)())
    deltas = [d for e in events for d in choice.feed(e)]
    return choice, deltas


def test_one_token_delta_per_generated_token_eos_included():
    choice, deltas = run_choice(token_events(["Hel", "lo", "!"]), tools=False)
    tokens = [d for d in deltas if isinstance(d, TokenDelta)]
    assert [t.token for t in tokens] == [10, 11, 12, EOS]
    assert all(t.probs is not None for t in tokens)
    assert len(choice.result.logprobs) == 4 == choice.finished.tokens_predicted
    assert choice.result.content == "Hello!"
    assert isinstance(deltas[-1], FinishDelta) and deltas[-1].reason == "stop"


def test_tool_call_tokens_have_logprobs_and_parse_into_calls():
    pieces = [CALL[i:i + 5] for i in range(0, len(CALL), 5)]
    choice, deltas = run_choice(token_events(pieces), tools=True)
    assert len([d for d in deltas if isinstance(d, TokenDelta)]) == len(pieces) + 1
    assert len(choice.result.logprobs) == len(pieces) + 1
    assert not any(isinstance(d, TextDelta) for d in deltas), "markup must not become content"
    starts = [d for d in deltas if isinstance(d, ToolCallStart)]
    assert [s.name for s in starts] == ["get_weather"]
    args = "".join(d.text for d in deltas if isinstance(d, ToolCallArgs))
    assert json.loads(args) == {"city": "Paris"}
    assert choice.result.tool_calls[0].arguments == args
    assert deltas[-1].reason == "tool_calls"


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_parsing_does_not_depend_on_how_text_is_split(size):
    text = "Sure.\n" + CALL + "\n" + CALL.replace("Paris", "Rome")
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    choice, _ = run_choice(token_events(pieces), tools=True)
    r = choice.result
    assert r.content.strip() == "Sure."
    assert [json.loads(t.arguments) for t in r.tool_calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert len({t.id for t in r.tool_calls}) == 2


def test_released_tail_is_parsed_and_kept_raw():
    events = [TokenOut(10, "ab", probs(10)), finished(1, "limit", text="cd")]
    choice, deltas = run_choice(events, tools=False)
    assert choice.result.raw_text == "abcd" == choice.result.content
    assert deltas[-1].reason == "length"


def test_parser_chain_passes_only_text_to_the_next_parser():
    class Upper:
        """A stand-in reasoning parser: everything up to '|' is reasoning."""

        def __init__(self):
            self.done = False

        def feed(self, text):
            from refserver.stream.deltas import ReasoningDelta
            if self.done:
                return [TextDelta(text)]
            head, sep, tail = text.partition("|")
            self.done = bool(sep)
            return [ReasoningDelta(head)] + ([TextDelta(tail)] if tail else [])

        def finish(self):
            return []

    from refserver.chat.tool_calls import HermesToolCallParser
    chain = ParserChain([Upper(), HermesToolCallParser()])
    out = chain.feed("think <tool_call>|") + chain.feed(CALL) + chain.finish()
    kinds = [type(d).__name__ for d in out]
    assert kinds[0] == "ReasoningDelta" and out[0].text == "think <tool_call>"
    assert "ToolCallStart" in kinds and "TextDelta" not in kinds


def test_usage_counts_a_shared_prompt_once():
    a = ChoiceStream(0, GenerationRequest([1, 2, 3]), group=0)
    b = ChoiceStream(1, GenerationRequest([1, 2, 3]), group=0)
    c = ChoiceStream(2, GenerationRequest([4, 5]), group=1)
    a.feed(finished(4, prompt=3, cache_n=1))
    b.feed(finished(5, prompt=3, cache_n=1))
    c.feed(finished(2, prompt=2))
    u = usage([a, b, c])
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (5, 11, 1)
    assert u.to_openai()["total_tokens"] == 16


@pytest.mark.parametrize("stop_type,has,expected", [
    ("eos", True, "tool_calls"), ("word", True, "tool_calls"), ("limit", True, "length"),
    ("eos", False, "stop"), ("limit", False, "length"), ("none", True, "stop"),
])
def test_finish_reason(stop_type, has, expected):
    assert finish_reason_for(stop_type, has) == expected


# ------------------------------------------------------------------ Generation, fake engine
class FakeHandle:
    def __init__(self):
        self.cancelled = False
        self.id_slot = 0

    def cancel(self):
        self.cancelled = True


class FakeEngine:
    """Plays a script of events per request on the loop (as the bridge would deliver them)."""

    def __init__(self, scripts: list[list], fail_at: int | None = None):
        self.scripts = scripts
        self.fail_at = fail_at
        self.handles: list[FakeHandle] = []

    def submit(self, request, sink):
        if self.fail_at == len(self.handles):
            raise InvalidRequest("bad request")
        script = self.scripts[len(self.handles)]
        loop = asyncio.get_running_loop()
        for k, event in enumerate(script):
            loop.call_later(0.001 * (k + 1), sink, event)
        self.handles.append(FakeHandle())
        return self.handles[-1]


def make_generation(engine, n_requests: int, **kw) -> Generation:
    bridge = EventBridge(asyncio.get_running_loop(), 0.0)
    return Generation(engine, bridge, [GenerationRequest([1, 2, 3]) for _ in range(n_requests)], **kw)


def test_collect_is_the_fold_of_stream():
    scripts = [token_events(["a", "b"]), token_events(["<tool", "_call>{\"name\": \"f\", \"arguments\": {}}",
                                                       "</tool_call>"])]

    async def both():
        g1 = make_generation(FakeEngine(scripts), 2, n=2, parsers=select_parsers(tools=True))
        seen = {0: [], 1: []}
        async for choice, deltas in g1.stream():
            seen[choice.index] += deltas
        g2 = make_generation(FakeEngine(scripts), 2, n=2, parsers=select_parsers(tools=True))
        return g1, seen, g2, await g2.collect()

    g1, seen, g2, results = asyncio.run(both())
    for i, r in enumerate(results):
        streamed = seen[i]
        assert r.content == "".join(d.text for d in streamed if isinstance(d, TextDelta))
        assert len(r.logprobs) == len([d for d in streamed if isinstance(d, TokenDelta)])
        assert r.finish.reason == streamed[-1].reason
    assert results[1].tool_calls[0].name == "f" and results[1].finish.reason == "tool_calls"
    assert g1.usage() == g2.usage() and g2.usage().prompt_tokens == 3  # n=2: one prompt
    assert g2.n_predicted_tokens == 3 + 4


def test_failed_event_raises_and_cancels():
    scripts = [[TokenOut(10, "a"), Failed(ServerError("boom"))], token_events(["x"] * 50)]

    async def run():
        engine = FakeEngine(scripts)
        gen = make_generation(engine, 2)
        with pytest.raises(ServerError, match="boom"):
            await gen.collect()
        return engine

    engine = asyncio.run(run())
    assert all(h.cancelled for h in engine.handles)


def test_submit_is_all_or_nothing():
    async def run():
        engine = FakeEngine([token_events(["a"])] * 3, fail_at=2)
        with pytest.raises(InvalidRequest):
            make_generation(engine, 3)
        return engine

    engine = asyncio.run(run())
    assert len(engine.handles) == 2 and all(h.cancelled for h in engine.handles)


def test_client_gone_ends_the_consumer():
    async def run():
        engine = FakeEngine([token_events(["a"] * 100)])
        gen = make_generation(engine, 1)
        got = 0
        with pytest.raises(ClientGone):
            async for _c, _d in gen.stream():
                got += 1
                if got == 3:
                    gen.client_gone()
        return engine, got

    engine, got = asyncio.run(run())
    assert got == 3 and engine.handles[0].cancelled


def test_transport_is_drained_and_kept_alive():
    class Transport:
        def __init__(self):
            self.last_write = 0.0  # long ago: a keepalive is due at once
            self.drains = self.keepalives = 0

        async def drain(self):
            self.drains += 1

        async def keepalive(self):
            self.keepalives += 1
            import time
            self.last_write = time.monotonic()

    async def run():
        t = Transport()
        gen = make_generation(FakeEngine([token_events(["a", "b"])]), 1)
        async for _c, _d in gen.stream(t, keepalive=10.0):
            pass
        return t

    t = asyncio.run(run())
    assert t.drains >= 1 and t.keepalives == 1
