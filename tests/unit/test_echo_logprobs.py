"""`/v1/completions` with `echo`: the prompt comes back before the completion, and with
`logprobs` its own tokens' log-probabilities, the first one null (as vLLM serves it; what
lm-evaluation-harness's loglikelihood tasks send with `max_tokens: 0`)."""

from __future__ import annotations

import math

import pytest

logprobs = pytest.mark.feature("logprobs")
pytestmark = pytest.mark.profile("openai")

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside."


@logprobs
def test_echo_returns_the_prompt_first(chat_server):
    """/v1/completions `echo`: "Echo back the prompt in addition to the completion"."""
    body = chat_server.ok("/v1/completions", {"prompt": STORY, "echo": True, "max_tokens": 3, "temperature": 0})
    plain = chat_server.ok("/v1/completions", {"prompt": STORY, "max_tokens": 3, "temperature": 0})
    assert body["choices"][0]["text"] == STORY + plain["choices"][0]["text"]


@pytest.mark.profile("refserver")  # OpenAI's `logprobs` covers output tokens; prompt-token entries are vLLM's and refserver's
@logprobs
def test_prompt_logprobs_for_loglikelihood(chat_server):
    """`echo` with `logprobs` and `max_tokens: 0` (lm-evaluation-harness's loglikelihood
    request): the prompt comes back with one entry per prompt token (`usage.prompt_tokens`),
    the first without a logprob, and nothing is generated."""
    body = chat_server.ok("/v1/completions", {"model": chat_server.model_id(), "prompt": STORY, "echo": True,
                                              "logprobs": 1, "max_tokens": 0, "temperature": 0})
    choice = body["choices"][0]
    lp = choice["logprobs"]
    n_prompt = body["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n_prompt
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 and math.isfinite(v) for v in lp["token_logprobs"][1:])
    assert all(len(top) >= 1 for top in lp["top_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 0
    assert choice["text"] == STORY


@pytest.mark.profile("llamacpp")
@logprobs
def test_prompt_logprob_equals_the_generated_tokens(chat_server):
    """The log-probability of a prompt token is what the model gave that token when it
    generated it: generate greedily, then score prompt + generated tokens with echo."""
    ids = chat_server.tokenize(STORY)
    gen = chat_server.ok("/completion", {"prompt": ids, "n_predict": 3, "temperature": 0, "n_probs": 1,
                                         "cache_prompt": False})
    generated = [p["id"] for p in gen["completion_probabilities"]]
    expected = [p["logprob"] for p in gen["completion_probabilities"]]
    body = chat_server.ok("/v1/completions", {"prompt": ids + generated, "echo": True, "logprobs": 1,
                                              "max_tokens": 0})
    scored = body["choices"][0]["logprobs"]["token_logprobs"][len(ids):]
    assert scored == pytest.approx(expected, abs=2e-3)
    # greedy tokens are their position's top alternative (lm-eval's `is_greedy`)
    tops = body["choices"][0]["logprobs"]["top_logprobs"][len(ids):]
    tokens = body["choices"][0]["logprobs"]["tokens"][len(ids):]
    assert all(max(top, key=top.get) == tok for top, tok in zip(tops, tokens))


@logprobs
def test_streamed_echo_starts_with_the_prompt(chat_server):
    """Streamed, `echo` still gives the prompt before the completion."""
    data = {"model": chat_server.model_id(), "prompt": STORY, "echo": True, "max_tokens": 2, "temperature": 0}
    events = chat_server.make_stream_request("POST", "/v1/completions", {**data, "stream": True}).read_all()
    text = "".join(ch["text"] for ev in events for ch in ev["choices"])
    assert text == chat_server.ok("/v1/completions", data)["choices"][0]["text"]
    assert text.startswith(STORY)


@logprobs
@pytest.mark.profile("refserver")  # the prompt as a chunk of its own is refserver's choice
def test_streamed_echo_sends_the_prompt_first(chat_server):
    events = chat_server.make_stream_request("POST", "/v1/completions", {
        "prompt": STORY, "echo": True, "logprobs": 2, "max_tokens": 2, "stream": True, "ignore_eos": True}).read_all()
    first = events[0]["choices"][0]
    assert first["text"] == STORY
    assert first["logprobs"]["token_logprobs"][0] is None
    assert len(first["logprobs"]["tokens"]) == len(chat_server.tokenize(STORY, add_special=True))
    text = "".join(ev["choices"][0]["text"] for ev in events if ev.get("choices"))
    assert text.startswith(STORY)
    generated = [ev["choices"][0]["logprobs"] for ev in events[1:] if ev["choices"][0]["logprobs"]]
    assert sum(len(lp["tokens"]) for lp in generated) == 2  # then the completion's own tokens
