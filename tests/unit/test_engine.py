"""Engine behaviour with the fake backend: batching, slots, caches, stopping, seeds."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from engine_helpers import Collector, RecordingBackend, make_engine, prompt, run, text_of, tokens_of

from refserver import errors
from refserver.engine.types import Failed, Finished, GenerationRequest, Progress, SamplingParams, TokenOut

pytestmark = [pytest.mark.feature("engine"), pytest.mark.needs_shared, pytest.mark.profile("refserver")]

# " a time there was a girl" in the stories260K vocabulary
STORY = [261, 378, 383, 286, 261, 298, 315, 421]
GREEDY = SamplingParams(temperature=0.0)


def steered(**kw) -> RecordingBackend:
    return RecordingBackend(512, 2048, likely=[[1] + STORY], **kw)


def test_one_model_call_per_step_with_four_decoding_slots():
    be = RecordingBackend(512, 2048)
    eng = make_engine(be, n_slots=4, start=False)
    cols = [Collector() for _ in range(4)]
    for i, c in enumerate(cols):  # queued before start: all four begin in the same step
        eng.submit(GenerationRequest(prompt(f"Tom had {i} cats"), SamplingParams(seed=i, ignore_eos=True),
                                     n_predict=30), c)
    assert eng.stats()["requests_deferred"] == 4
    eng.start()
    for c in cols:
        assert isinstance(c.wait()[-1], Finished)
    st = eng.stats()
    assert st["n_model_calls"] == st["n_steps"] == len(be.calls) == 30  # 1 prefill step + 29 decode steps
    assert all(len(call) == 4 for call in be.calls)  # every call carries all four slots
    assert all(n == 1 for call in be.calls[1:] for (_, _, n, _) in call)
    eng.shutdown()


def test_long_prompt_is_chunked_beside_decoding_slots():
    be = RecordingBackend(512, 2048)
    eng = make_engine(be, n_slots=2, n_batch=8)
    gate = threading.Event()
    c1 = Collector()

    def sink(e):
        c1(e)
        if isinstance(e, TokenOut):
            gate.set()
    eng.submit(GenerationRequest(prompt("Hi"), SamplingParams(ignore_eos=True), n_predict=200), sink)
    gate.wait(5)
    long = prompt("Once upon a time there was a girl who liked to play in the sun with her dog " * 3)
    ev = run(eng, GenerationRequest(long, GREEDY, n_predict=3, return_progress=True))
    c1.wait()
    mixed = [call for call in be.calls if len(call) == 2 and {c[2] for c in call} - {1}]
    assert mixed and all(max(c[2] for c in call) <= 8 for call in mixed)  # chunks of <= 8 next to a decode
    prog = [e for e in ev if isinstance(e, Progress)]
    assert prog[0].processed == prog[0].cache and prog[-1].processed == prog[-1].total == len(long)
    assert all(a.processed < b.processed for a, b in itertools.pairwise(prog))
    assert len({(p.total, p.cache) for p in prog}) == 1
    eng.shutdown()


def test_eight_requests_on_four_slots_all_finish():
    eng = make_engine(n_slots=4, start=False)
    cols = [Collector() for _ in range(8)]
    for i, c in enumerate(cols):
        eng.submit(GenerationRequest(prompt(f"Sam saw {i} birds"), SamplingParams(seed=i), n_predict=10), c)
    assert eng.stats()["requests_deferred"] == 8
    eng.start()
    fins = [c.wait()[-1] for c in cols]
    assert all(isinstance(f, Finished) for f in fins)
    assert {f.id_slot for f in fins} == {0, 1, 2, 3}
    assert eng.stats()["requests_deferred"] == 0 and eng.stats()["n_busy_slots"] == 0
    eng.shutdown()


def test_cancel_frees_the_slot():
    eng = make_engine(n_slots=1)
    c = Collector()
    holder = {}
    cancelled = threading.Event()

    def sink(e):
        c(e)
        if isinstance(e, TokenOut) and c.q.qsize() >= 3:
            holder["h"].cancel()
            cancelled.set()
    with eng._lock:  # hold the engine until the handle is known
        holder["h"] = eng.submit(GenerationRequest(prompt(), SamplingParams(ignore_eos=True)), sink)
    assert cancelled.wait(5)
    deadline = time.time() + 1
    while eng.slots()[0]["is_processing"] and time.time() < deadline:
        time.sleep(0.01)
    assert not eng.slots()[0]["is_processing"]  # idle within a second
    time.sleep(0.05)
    n = c.q.qsize()
    assert n == 3 and all(isinstance(c.q.get(), TokenOut) for _ in range(n))  # nothing after the cancel
    ev = run(eng, GenerationRequest(prompt("Bob"), SamplingParams(seed=3), n_predict=4))
    assert isinstance(ev[-1], Finished) and ev[-1].tokens_predicted == 4
    eng.shutdown()


def test_repeated_prompt_reuses_the_slot_cache():
    eng = make_engine(n_slots=1, cache_ram_mib=0)
    req = GenerationRequest(prompt(), SamplingParams(seed=42, ignore_eos=True), n_predict=12)
    a, b = run(eng, req), run(eng, req)
    assert a[-1].timings["cache_n"] == 0 and a[-1].timings["prompt_n"] == len(req.prompt)
    assert b[-1].timings["cache_n"] == len(req.prompt) - 1 and b[-1].timings["prompt_n"] == 1
    assert tokens_of(a) == tokens_of(b) and text_of(a) == text_of(b)
    assert b[-1].tokens_cached == len(req.prompt) + 12 - 1
    c = run(eng, GenerationRequest(prompt(), SamplingParams(seed=42, ignore_eos=True), n_predict=12, cache_prompt=False))
    assert c[-1].timings["cache_n"] == 0 and tokens_of(c) == tokens_of(a)
    eng.shutdown()


def test_cross_slot_prompt_cache_serves_another_slot():
    eng = make_engine(n_slots=2)
    req = GenerationRequest(prompt(), SamplingParams(seed=5), n_predict=8, id_slot=0)
    a = run(eng, req)
    b = run(eng, GenerationRequest(prompt(), SamplingParams(seed=5), n_predict=8, id_slot=1))
    assert b[-1].id_slot == 1 and b[-1].timings["cache_n"] == len(req.prompt) - 1
    assert tokens_of(a) == tokens_of(b)
    assert eng.stats()["prompt_tokens_cache_total"] == len(req.prompt) - 1
    eng.shutdown()


def test_slot_choice_prefers_the_longest_cached_prefix():
    eng = make_engine(n_slots=3, cache_ram_mib=0)
    run(eng, GenerationRequest(prompt("Lily liked the sun"), GREEDY, n_predict=2, id_slot=2))
    ev = run(eng, GenerationRequest(prompt("Lily liked the sun and the sea"), GREEDY, n_predict=2))
    assert ev[-1].id_slot == 2 and ev[-1].timings["cache_n"] > 0
    eng.shutdown()


def test_unrelated_requests_take_the_lowest_free_slot():
    """With no useful cached prefix a request takes the lowest free slot, not the least
    recently used one, so busy slots stay packed for the batched decode call."""
    eng = make_engine(n_slots=4, cache_ram_mib=0)
    for slot in (3, 2, 1, 0):  # slot 3 is now the least recently used; all caches share only BOS
        run(eng, GenerationRequest(prompt(f"Story number {slot} begins"), GREEDY, n_predict=2, id_slot=slot))
    for text in ("Lily liked the sun", "A dog ran far away", "The moon was big and round"):
        assert run(eng, GenerationRequest(prompt(text), GREEDY, n_predict=2))[-1].id_slot == 0
    # a request that shares most of slot 2's prompt still goes to slot 2
    run(eng, GenerationRequest(prompt("Tom had a red kite and a blue ball"), GREEDY, n_predict=2, id_slot=2))
    ev = run(eng, GenerationRequest(prompt("Tom had a red kite and a blue ball too"), GREEDY, n_predict=2))
    assert ev[-1].id_slot == 2
    eng.shutdown()


@pytest.mark.parametrize("n_slots,n_batch", [(1, 8), (2, 64), (2, 8), (1, 64)])
def test_seeded_sampling_is_independent_of_slots_and_batch(n_slots, n_batch):
    eng = make_engine(n_slots=n_slots, n_batch=n_batch)
    other = Collector()
    if n_slots > 1:
        eng.submit(GenerationRequest(prompt("Noise"), SamplingParams(seed=9), n_predict=30), other)
    ev = run(eng, GenerationRequest(prompt() * 3, SamplingParams(seed=1234, temperature=1.0), n_predict=24))
    if n_slots > 1:
        other.wait()
    eng.shutdown()
    toks = tokens_of(ev)
    assert ev[-1].seed == 1234
    expected = getattr(test_seeded_sampling_is_independent_of_slots_and_batch, "expected", None)
    if expected is None:
        test_seeded_sampling_is_independent_of_slots_and_batch.expected = toks
    else:
        assert toks == expected


def test_different_seeds_differ_and_server_seed_applies():
    eng = make_engine(n_slots=1, seed=77)
    p = prompt()
    a = run(eng, GenerationRequest(p, SamplingParams(seed=1, temperature=1.0), n_predict=16))
    b = run(eng, GenerationRequest(p, SamplingParams(seed=2, temperature=1.0), n_predict=16))
    c = run(eng, GenerationRequest(p, SamplingParams(temperature=1.0), n_predict=16))
    d = run(eng, GenerationRequest(p, SamplingParams(seed=77, temperature=1.0), n_predict=16))
    assert tokens_of(a) != tokens_of(b)
    assert c[-1].seed == 77 and tokens_of(c) == tokens_of(d)
    eng.shutdown()


def test_context_exceeded_and_context_full():
    eng = make_engine(n_slots=2, n_ctx=64, kv_unified=False)  # llama.cpp's --no-kv-unified split
    assert eng.n_ctx_slot == 32
    with pytest.raises(errors.ContextExceeded):
        eng.submit(GenerationRequest(list(range(3, 35))), lambda e: None)
    with pytest.raises(errors.InvalidRequest):
        eng.submit(GenerationRequest([]), lambda e: None)
    with pytest.raises(errors.InvalidRequest):
        eng.submit(GenerationRequest([5, 6], id_slot=2), lambda e: None)
    ev = run(eng, GenerationRequest(list(range(3, 23)), SamplingParams(ignore_eos=True)))
    fin = ev[-1]
    # llama.cpp's rule: prompt + generated tokens = the slot's context (the last one needs no cell)
    assert fin.stop_type == "limit" and fin.truncated and fin.tokens_cached == 31
    assert fin.tokens_evaluated + fin.tokens_predicted == 32
    eng.shutdown()


def test_unified_context_each_slot_may_use_all_of_it():
    eng = make_engine(n_slots=4, n_ctx=64)
    assert eng.n_ctx_slot == 64 and eng.n_ctx_total == 64
    with pytest.raises(errors.ContextExceeded):
        eng.submit(GenerationRequest(list(range(3, 67))), lambda e: None)
    fin = run(eng, GenerationRequest(list(range(3, 53)), SamplingParams(ignore_eos=True)))[-1]
    assert fin.truncated and fin.tokens_evaluated + fin.tokens_predicted == 64  # 50 + 14: past 64 / 4
    assert make_engine(n_slots=2, n_ctx=8192, start=False).n_ctx_slot == 2048  # capped at the trained context
    eng.shutdown()


def test_unified_context_admission_waits_for_room():
    """Two 40-token prompts cannot share 64 tokens: the second waits for the first to end."""
    eng = make_engine(n_slots=2, n_ctx=64, start=False)
    order: list[tuple[str, object]] = []
    done = threading.Event()

    def sink(name):
        def put(e):
            order.append((name, e))
            if isinstance(e, Finished) and name == "b":
                done.set()
        return put
    eng.submit(GenerationRequest(list(range(3, 43)), SamplingParams(ignore_eos=True)), sink("a"))
    eng.submit(GenerationRequest(list(range(50, 90)), SamplingParams(ignore_eos=True)), sink("b"))
    eng.start()
    assert done.wait(20)
    a_end = next(i for i, (n, e) in enumerate(order) if n == "a" and isinstance(e, Finished))
    b_first = next(i for i, (n, e) in enumerate(order) if n == "b")
    assert b_first > a_end
    for name in "ab":
        fin = next(e for n, e in order if n == name and isinstance(e, Finished))
        assert fin.tokens_evaluated + fin.tokens_predicted == 64
    eng.shutdown()


def test_unified_context_growth_stops_at_the_shared_budget():
    """Two 20-token prompts run together; whichever reaches the budget first ends truncated
    with less than the whole context, and the other then grows to all of it."""
    eng = make_engine(n_slots=2, n_ctx=64, start=False)
    cols = [Collector(), Collector()]
    for i, c in enumerate(cols):
        eng.submit(GenerationRequest(list(range(3 + 20 * i, 23 + 20 * i)), SamplingParams(ignore_eos=True)), c)
    eng.start()
    fins = sorted((c.wait()[-1] for c in cols), key=lambda f: f.tokens_predicted)
    assert all(f.truncated for f in fins)
    assert fins[0].tokens_evaluated + fins[0].tokens_predicted < 64 - 20
    assert fins[1].tokens_evaluated + fins[1].tokens_predicted == 64
    assert eng.stats()["n_steps"] < 64  # they ran side by side
    eng.shutdown()


@pytest.mark.parametrize("n_keep,kept", [(0, 0), (4, 4), (-1, 20)])
def test_context_shift_keeps_n_keep_and_goes_on(n_keep, kept):
    """With context shift a full slot drops half of what follows `n_keep` (-1: the prompt)
    and re-evaluates the rest at its new positions, so generation goes past the context."""
    be = RecordingBackend(512, 2048)
    eng = make_engine(be, n_slots=1, n_ctx=32, context_shift=True)
    ev = run(eng, GenerationRequest(list(range(3, 23)), SamplingParams(ignore_eos=True), n_predict=40,
                                    n_keep=n_keep))
    fin = ev[-1]
    assert isinstance(fin, Finished) and fin.stop_type == "limit" and not fin.truncated
    assert fin.tokens_predicted == 40 and len(tokens_of(ev)) == 40
    refills = [call[0] for call in be.calls[1:] if call[0][2] > 1]  # decode steps carry 1 token
    assert refills, "no re-evaluation step after the shift"
    _, pos, n, _ = refills[0]
    # the shift comes when the next token would fill the slot (llama.cpp: n_past + 1 >= n_ctx):
    # of the 31 cached tokens, half of what follows n_keep is dropped
    assert pos == kept and n == (31 - kept) - (31 - kept) // 2
    assert all(p + k <= 32 for call in be.calls for (_, p, k, _) in call)  # never past the slot
    eng.shutdown()


def test_without_context_shift_a_full_slot_ends_truncated():
    eng = make_engine(n_slots=1, n_ctx=32)
    fin = run(eng, GenerationRequest(list(range(3, 23)), SamplingParams(ignore_eos=True), n_predict=40))[-1]
    assert fin.truncated and fin.tokens_evaluated + fin.tokens_predicted == 32  # llama.cpp's rule
    eng.shutdown()


def test_stop_string_spanning_tokens():
    eng = make_engine(steered(), n_slots=1)
    ev = run(eng, GenerationRequest([1, 261], GREEDY, stop=("e th", "zzz")))
    fin = ev[-1]
    assert fin.stop_type == "word" and fin.stopping_word == "e th"
    assert text_of(ev) == " tim"  # " time" + " there": the stop string starts inside " time"
    # the held-back " th" never left the engine: no event text contains the stop string
    assert all("th" not in e.text for e in ev if isinstance(e, TokenOut))
    eng.shutdown()


def test_n_predict_and_server_default():
    """The server's -n is the default for requests that give none; a request's own value
    wins, larger or smaller (llama.cpp's current behaviour)."""
    eng = make_engine(steered(), n_slots=1, n_predict=5)
    a = run(eng, GenerationRequest([1, 261], GREEDY, n_predict=3))
    b = run(eng, GenerationRequest([1, 261], SamplingParams(temperature=0.0, ignore_eos=True), n_predict=9))
    c = run(eng, GenerationRequest([1, 261], GREEDY))
    assert (a[-1].stop_type, a[-1].tokens_predicted) == ("limit", 3)
    assert (b[-1].stop_type, b[-1].tokens_predicted) == ("limit", 9)
    assert (c[-1].stop_type, c[-1].tokens_predicted) == ("limit", 5)
    assert text_of(a) == " time there was"
    eng.shutdown()


def test_eos_and_ignore_eos():
    be = RecordingBackend(512, 2048, likely=[[1, 261, 2]])
    eng = make_engine(be, n_slots=1)
    a = run(eng, GenerationRequest([1, 261], GREEDY, n_predict=10))
    assert a[-1].stop_type == "eos" and a[-1].tokens_predicted == 1 and tokens_of(a) == [2]
    assert text_of(a) == ""
    b = run(eng, GenerationRequest([1, 261], SamplingParams(temperature=0.0, ignore_eos=True), n_predict=10))
    assert b[-1].stop_type == "limit" and b[-1].tokens_predicted == 10 and 2 not in tokens_of(b)
    eng.shutdown()


def test_token_probabilities():
    eng = make_engine(n_slots=1)
    ev = run(eng, GenerationRequest(prompt(), SamplingParams(seed=3, n_probs=5), n_predict=4))
    outs = [e for e in ev if isinstance(e, TokenOut)]
    for e in outs:
        lps = [t.value for t in e.probs.top]
        assert len(lps) == 5 and lps == sorted(lps, reverse=True) and lps[0] <= 0
        assert e.probs.chosen.id == e.token
    ev = run(eng, GenerationRequest(prompt(), SamplingParams(seed=3, n_probs=3, post_sampling_probs=True,
                                                             top_k=2), n_predict=4))
    for e in [e for e in ev if isinstance(e, TokenOut)]:
        ps = [t.value for t in e.probs.top]
        assert 1 <= len(ps) <= 2 and 0 < e.probs.chosen.value <= 1 and abs(sum(ps) - 1) < 1e-6
    eng.shutdown()


def test_queue_limit_and_shutdown():
    eng = make_engine(n_slots=1, max_queue=1, start=False)
    c = Collector()
    eng.submit(GenerationRequest(prompt(), SamplingParams(ignore_eos=True)), c)
    with pytest.raises(errors.Unavailable):
        eng.submit(GenerationRequest(prompt()), lambda e: None)
    eng.start()
    eng.shutdown()
    ev = c.wait()
    assert isinstance(ev[-1], Failed) and isinstance(ev[-1].error, errors.Unavailable)


def test_checkpoints_are_stored_in_the_prompt_cache():
    eng = make_engine(n_slots=2)
    p = prompt("Lily liked the sun and the sea and the sky")
    run(eng, GenerationRequest(p, GREEDY, n_predict=2, id_slot=0, checkpoints=((4, "system"),)))
    assert len(eng.prompt_cache) == 2  # the system prefix and the assistant tail
    ev = run(eng, GenerationRequest(p[:4] + [5, 6, 7], GREEDY, n_predict=2, id_slot=1))
    assert ev[-1].timings["cache_n"] == 4
    eng.shutdown()


def test_shutdown_before_start_fails_queued_requests():
    eng = make_engine(n_slots=1, start=False)
    c = Collector()
    eng.submit(GenerationRequest(prompt()), c)
    eng.shutdown()
    assert isinstance(c.wait()[-1], Failed)
    with pytest.raises(errors.Unavailable):
        eng.submit(GenerationRequest(prompt()), c)
