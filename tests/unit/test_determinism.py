"""Seeded output is a function of the request alone: not of the slot, the number of slots,
--batch-size, or whatever else runs at the same time (issue 3)."""

from __future__ import annotations

import itertools

import pytest
from utils import ServerPreset, parallel_function_calls

pytestmark = [pytest.mark.feature("determinism"), pytest.mark.profile("refserver")]

PROMPT = "Once upon a time"
LONG_PROMPT = ("Once upon a time, there was a little cat named Tom. Tom lived in a small house with a red door. "
               "Every morning he sat by the window and watched the birds in the garden. One day, a big dog came "
               "to the garden and the birds flew away. Tom was sad, so he went outside to find them.")


def completion(server, seed=42, temperature=1.0, prompt=PROMPT, n_predict=32, **extra):
    return server.ok("/completion", {"prompt": prompt, "n_predict": n_predict, "seed": seed,
                                      "temperature": temperature, "ignore_eos": True, **extra})["content"]


def batch_server(n_batch):
    def make():
        server = ServerPreset.one_slot()
        server.n_batch = n_batch
        return server
    return make


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_same_seed_same_result(chat_server, temperature):
    results = [completion(chat_server, temperature=temperature, cache_prompt=False) for _ in range(4)]
    assert len(set(results)) == 1, results


@pytest.mark.needs_flags
def test_same_seed_one_and_two_slots(chat_server, server_pool):
    one = server_pool("one-slot", ServerPreset.one_slot)
    assert [completion(one) for _ in range(2)] == [completion(chat_server) for _ in range(2)]


def test_different_seeds_differ(chat_server):
    results = [completion(chat_server, seed=seed) for seed in range(4)]
    for prev, cur in itertools.pairwise(results):
        assert prev != cur, results


def test_same_result_on_every_slot(chat_server):
    n = chat_server.props()["total_slots"]
    results = {completion(chat_server, seed=5, id_slot=i) for i in range(min(n, 2))}
    assert len(results) == 1, results


def test_same_result_under_concurrent_load(chat_server):
    alone = completion(chat_server, seed=9)
    calls = [(completion, (chat_server, 9))] + [
        (completion, (chat_server, 100 + i, 1.0, "What is the capital of France?")) for i in range(3)]
    loaded = parallel_function_calls(calls)
    assert loaded[0] == alone


@pytest.mark.needs_flags
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batch_size_does_not_change_output(server_pool, temperature):
    small = server_pool("batch-8", batch_server(8))
    large = server_pool("batch-64", batch_server(64))
    a = [completion(small, temperature=temperature, prompt=LONG_PROMPT, cache_prompt=False) for _ in range(2)]
    b = [completion(large, temperature=temperature, prompt=LONG_PROMPT, cache_prompt=False) for _ in range(2)]
    assert a[0] == a[1] == b[0] == b[1]


def test_cache_does_not_change_output(chat_server):
    cold = completion(chat_server, seed=3, prompt=LONG_PROMPT, cache_prompt=False, id_slot=0)
    completion(chat_server, seed=3, prompt=LONG_PROMPT, id_slot=0)
    warm = chat_server.ok("/completion", {"prompt": LONG_PROMPT, "n_predict": 32, "seed": 3, "temperature": 1.0,
                                          "ignore_eos": True, "id_slot": 0})
    assert warm["timings"]["cache_n"] > 0
    assert warm["content"] == cold


@pytest.mark.profile("openai")  # chat/create `seed`: repeated requests "should return the same result"
def test_chat_seed_reproducible_streamed_and_not(chat_server):
    data = {"model": chat_server.model_id(), "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 24, "seed": 11, "temperature": 1.0}
    plain = chat_server.make_any_request("POST", "/v1/chat/completions", data)
    streamed = chat_server.make_any_request("POST", "/v1/chat/completions", {**data, "stream": True})
    assert plain["choices"][0]["message"]["content"] == streamed["choices"][0]["message"]["content"]
