"""Parallel slots, queueing, slot selection and the prompt cache across slots."""

from __future__ import annotations

import pytest
from utils import TARGET, ServerPreset, error_of, metric, parallel_function_calls, wait_until

slots = pytest.mark.feature("slots")
prompt_cache = pytest.mark.feature("prompt_cache")
engine = pytest.mark.feature("engine")
pytestmark = pytest.mark.profile("llamacpp")

PROMPTS = ["Once upon a time, there was a little cat named Tom.", "What is the capital of France?",
           "Once upon a time, there was a big dog named Max.", "What is 3 + 4?",
           "Once upon a time, there was a small bird named Lily.", "What is the capital of Spain?",
           "Once upon a time, there was a happy fish named Sam.", "What is 5 + 2?"]


def slots_server(n_slots: int, n_predict: int = 64):
    def make():
        server = ServerPreset.chat()
        server.n_slots, server.n_ctx, server.n_predict = n_slots, 256 * n_slots, n_predict
        server.context_shift = True  # lets hold_slot() keep a slot busy until the test lets go
        return server
    return make


@slots
@pytest.mark.needs_flags
@pytest.mark.parametrize("n_slots,n_requests", [(1, 3), (2, 2), (2, 4), (4, 2), (4, 6), (4, 8)])
def test_parallel_slots(server_pool, n_slots, n_requests):
    server = server_pool(f"slots-{n_slots}", slots_server(n_slots))
    holders = [server.hold_slot() for _ in range(n_slots)]  # each busy until closed: no slot is reused
    try:
        busy = [s for s in server.slots() if s["is_processing"]]
        assert len(busy) == n_slots, f"{n_slots} concurrent requests occupy {len(busy)} slot(s)"
    finally:
        for h in holders:
            h.close()
    assert server.wait_slots_idle(2.0)
    calls = [(server.post, ("/completion", {"prompt": PROMPTS[i % len(PROMPTS)], "n_predict": 12,
                                            "ignore_eos": True})) for i in range(n_requests)]
    results = parallel_function_calls(calls)
    for res in results:
        assert res.status_code == 200, res.body
        assert res.body["content"].strip()
        assert res.body["tokens_predicted"] == 12
        assert 0 <= res.body["id_slot"] < n_slots
    assert server.wait_slots_idle(1.0)


@slots
def test_slot_is_processing_while_streaming(chat_server):
    stream = chat_server.make_stream_request("POST", "/completion", {
        "prompt": PROMPTS[0], "n_predict": 64, "ignore_eos": True, "stream": True})
    it = iter(stream)
    first = next(it)
    busy = [s for s in chat_server.slots() if s["is_processing"]]
    assert [s["id"] for s in busy] == [first["id_slot"]]
    for _ in it:
        pass
    assert chat_server.wait_slots_idle(1.0)


@slots
@pytest.mark.needs_flags
def test_fail_on_no_slot(server_pool):
    server = server_pool("slots-1-long", slots_server(1, n_predict=400))
    assert server.get("/slots?fail_on_no_slot=1").status_code == 200
    stream = server.make_stream_request("POST", "/completion", {
        "prompt": PROMPTS[0], "n_predict": 400, "ignore_eos": True, "stream": True})
    next(iter(stream))
    try:
        res = server.get("/slots?fail_on_no_slot=1")
        assert res.status_code == 503
        assert error_of(res)["type"] == "unavailable_error"
    finally:
        stream.close()
    assert server.wait_slots_idle(1.0)


@slots
@pytest.mark.needs_flags
def test_requests_wait_for_a_slot(server_pool):
    """With one slot, a second request waits and then completes normally."""
    server = server_pool("slots-1-long", slots_server(1, n_predict=400))
    results = parallel_function_calls([
        (server.post, ("/completion", {"prompt": p, "n_predict": 8, "ignore_eos": True})) for p in PROMPTS[:3]])
    assert all(r.status_code == 200 and r.body["tokens_predicted"] == 8 for r in results)


@prompt_cache
@pytest.mark.profile("refserver")  # llama.cpp documents no reuse of another live slot's cache
def test_cache_reused_across_slots(chat_server):
    """A prefix served on slot 0 is reused by a request on slot 1."""
    chat_server.require_slots(2)
    prefix = ("Once upon a time, in a quiet village by the sea, there lived an old fisherman and his "
              "clever grey cat, who every morning walked with him to the harbour to watch the boats.")
    chat_server.ok("/completion", {"prompt": prefix + " The cat", "n_predict": 2, "id_slot": 0})
    body = chat_server.ok("/completion", {"prompt": prefix + " One day", "n_predict": 2, "id_slot": 1})
    assert body["id_slot"] == 1
    assert body["timings"]["cache_n"] > 0


@prompt_cache
def test_new_request_goes_to_slot_with_longest_prefix(chat_server):
    prefix = "Once upon a time, there was a green frog named Fred who lived by a pond. "
    first = chat_server.ok("/completion", {"prompt": prefix + "Fred", "n_predict": 2})
    again = chat_server.ok("/completion", {"prompt": prefix + "Fred was", "n_predict": 2})
    assert again["timings"]["cache_n"] > 0
    assert again["id_slot"] == first["id_slot"]


@engine
@pytest.mark.needs_flags
def test_one_model_call_per_step_with_four_streams(server_pool):
    server = server_pool("slots-4-metrics", lambda: _with_metrics(slots_server(4)()))
    before = server.metrics()
    n_predict = 32

    def run(prompt):
        events = server.make_stream_request("POST", "/completion", {
            "prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "stream": True}).read_all()
        return events[-1]["tokens_predicted"]

    predicted = parallel_function_calls([(run, (p,)) for p in PROMPTS[:4]])
    assert predicted == [n_predict] * 4
    after = server.metrics()
    # refserver counts ONNX Runtime calls; the contract's counter is llama_decode() calls
    name = "n_model_calls_total" if metric(after, "n_model_calls_total") is not None else "n_decode_total"
    assert metric(after, name) is not None, f"{name} missing from /metrics"
    calls = metric(after, name) - metric(before, name, 0)
    assert n_predict <= calls < 2 * n_predict, (
        f"{calls} model calls for 4 streams of {n_predict} tokens: not one batched call per step")


def _with_metrics(server):
    server.server_metrics = True
    return server


@slots
def test_slots_idle_after_burst(chat_server):
    parallel_function_calls([(chat_server.post, ("/completion", {"prompt": p, "n_predict": 4}))
                             for p in PROMPTS[:4]])
    assert wait_until(lambda: not any(s["is_processing"] for s in chat_server.slots()), 1.0)


def _cache_bounded_server(size: int, ram_mib: int):
    def make():
        server = slots_server(2)()
        server.prompt_cache_size, server.cache_ram, server.server_metrics = size, ram_mib, True
        return server
    return make


def _distinct_prompts(n: int) -> list[str]:
    animals = ["cat", "dog", "bird", "fox", "bear", "frog", "duck", "owl"]
    return [f"Once upon a time, there was a {a} who lived in house number {i}. " * 6
            for i, a in enumerate(animals[:n])]


@prompt_cache
@pytest.mark.needs_flags
def test_prompt_cache_honours_the_entry_bound(server_pool):
    server = server_pool("cache-size-2", _cache_bounded_server(2, 64))
    for prompt in _distinct_prompts(6):
        server.ok("/completion", {"prompt": prompt, "n_predict": 2})
    entries = metric(server.metrics(), "prompt_cache_entries")
    assert 0 < entries <= 2


@prompt_cache
@pytest.mark.needs_flags
def test_prompt_cache_honours_the_byte_bound(server_pool):
    server = server_pool("cache-ram-1", _cache_bounded_server(100, 1))
    for prompt in _distinct_prompts(8):
        server.ok("/completion", {"prompt": prompt, "n_predict": 2})
    m = metric(server.metrics(), "prompt_cache_bytes")
    assert 0 < m <= 1 << 20
    # the newest entry survives eviction and serves the same prefix on the other slot
    prompt = "Once upon a time, there was a turtle who counted the stars every night. " * 5
    server.ok("/completion", {"prompt": prompt, "n_predict": 2, "id_slot": 0})
    again = server.ok("/completion", {"prompt": prompt + "One night", "n_predict": 2, "id_slot": 1})
    assert again["timings"]["cache_n"] > 0


@engine
@pytest.mark.needs_flags
@pytest.mark.parametrize("draft", [False, True], ids=["plain", "speculative"])
def test_context_shift_generates_past_the_context(server_pool, draft):
    """`--context-shift`: a request may generate more tokens than its slot holds; without it
    the same request ends truncated at the slot's size."""
    def make():
        server = ServerPreset.chat_with_draft() if draft else ServerPreset.chat()
        server.n_slots, server.n_ctx, server.n_predict, server.context_shift = 1, 128, -1, True
        return server
    server = server_pool(f"context-shift-{draft}", make)
    body = {"prompt": "Once upon a time", "n_predict": 300, "ignore_eos": True, "temperature": 0}
    res = server.ok("/completion", body)
    assert res["tokens_predicted"] == 300
    if TARGET.runs_refserver:  # llama.cpp's README: truncated = prompt + generated exceeded n_ctx, true here
        assert res["truncated"] is False
    assert res["stop_type"] == "limit" and res["content"]
    again = server.ok("/completion", body)
    assert again["content"] == res["content"], "greedy output after a shift is not deterministic"


@prompt_cache
@pytest.mark.needs_flags
@pytest.mark.extension  # refserver's eviction tiers in its cross-slot prompt cache
def test_chat_system_prompt_outlives_conversations_in_the_prompt_cache(server_pool):
    """A chat request's system part is kept as a "system" entry, which per-request entries
    are evicted before: with room for two entries, two unrelated requests evict the
    conversation but not its system prompt, so another slot still starts from it."""
    def make():
        server = slots_server(2)()
        server.prompt_cache_size = 2
        return server
    server = server_pool("slots-2-cache-2", make)
    system = {"role": "system", "content": "You are a patient storyteller who answers every question with a "
                                           "short tale about animals living by the sea."}

    def chat(user: str, slot: int) -> dict:
        return server.ok("/v1/chat/completions", {"messages": [system, {"role": "user", "content": user}],
                                                  "max_tokens": 2, "id_slot": slot})

    chat("Tell me about cats.", 0)
    for other in ("Once upon a time, a frog sat on a log.", "The weather today is sunny and warm."):
        server.ok("/completion", {"prompt": other, "n_predict": 2, "id_slot": 0})
    usage = chat("Tell me about dogs.", 1)["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    n_system = len(server.tokenize(system["content"]))  # the system part is longer still (its markup)
    assert n_system <= cached < usage["prompt_tokens"], usage
