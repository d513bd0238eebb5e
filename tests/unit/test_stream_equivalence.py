"""Stream ≡ non-stream: the same request streamed and not gives the same text, tool calls,
finish reasons, usage, and one logprob entry per generated token (EOS and tool-call
tokens included) -- on chat (text, a tool call, several tool calls, n=2), /v1/completions
and native /completion, at temperature 0 and seeded."""

from __future__ import annotations

import json

import pytest
from utils import TARGET, TIME_TOOL, WEATHER_TOOL

# The equivalence itself is OpenAI's (a stream is the same completion in chunks); that one
# logprob entry comes per generated token, EOS and tool-call markup included, and that the
# embedded model stops or finishes its forced calls here, are refserver's (the last tests).
pytestmark = [pytest.mark.feature("streaming"), pytest.mark.profile("openai")]

SYSTEM = "You are a helpful assistant."


def chat_messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def both(server, path: str, data: dict) -> tuple[dict, dict]:
    data = {"model": server.model_id(), **data}
    plain = server.make_any_request("POST", path, {**data, "stream": False})
    streamed = server.make_any_request("POST", path, {**data, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    return plain, streamed


def calls_of(choice: dict) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"].get("tool_calls") or []]


def assert_same_chat(plain: dict, streamed: dict) -> None:
    """Same choices, text, tool calls, finish reasons, logprob tokens and usage."""
    assert len(plain["choices"]) == len(streamed["choices"])
    for a, b in zip(plain["choices"], streamed["choices"]):
        assert a["index"] == b["index"]
        assert (a["message"].get("content") or "").strip() == (b["message"].get("content") or "").strip()
        assert calls_of(a) == calls_of(b)
        assert a["finish_reason"] == b["finish_reason"]
        la, lb = a["logprobs"]["content"], b["logprobs"]["content"]
        assert [e["token"] for e in la] == [e["token"] for e in lb]
        assert [e["logprob"] for e in la] == pytest.approx([e["logprob"] for e in lb], abs=1e-5)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert plain["usage"][key] == streamed["usage"][key], key


def skip_if_call_unfinished(plain: dict) -> None:
    """A forced call cut by max_tokens (another model may write long arguments) shows nothing."""
    if plain["choices"][0]["finish_reason"] == "length":
        pytest.skip("the forced call did not finish within max_tokens on this model")


LOGPROBS = {"temperature": 0, "logprobs": True, "top_logprobs": 2}
TEXT = {"messages": chat_messages("What is the capital of France?"), "max_tokens": 48, **LOGPROBS}
EOS = {"messages": chat_messages("Say hi."), "max_tokens": 200, **LOGPROBS}


def tool_call(max_tokens: int) -> dict:
    return {"messages": chat_messages("What is the weather in Paris?"), "tools": [WEATHER_TOOL],
            "tool_choice": "required", "max_tokens": max_tokens, **LOGPROBS}


PARALLEL = {"messages": chat_messages("What is the weather in Paris and the time in Tokyo?"),
            "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required", "parallel_tool_calls": True,
            "max_tokens": 160, **LOGPROBS}
N2 = {"messages": chat_messages("Tell me a story."), "max_tokens": 24, "n": 2, "seed": 7, "temperature": 0.9,
      "logprobs": True, "top_logprobs": 1}
COMPLETION = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "logprobs": 2}


def require_two_slots(server) -> None:
    """n=2 needs two slots on llama.cpp-style servers: read /props where the target has it."""
    if TARGET.offers("props"):
        server.require_slots(2)


def test_chat_text(chat_server):
    plain, streamed = both(chat_server, "/v1/chat/completions", TEXT)
    assert_same_chat(plain, streamed)
    assert plain["choices"][0]["message"]["content"]


def test_chat_text_ending_in_eos(chat_server):
    """A reply that stops by itself: finish_reason "stop" in both modes."""
    plain, streamed = both(chat_server, "/v1/chat/completions", EOS)
    if plain["choices"][0]["finish_reason"] != "stop":
        pytest.skip("the model did not stop by itself within 200 tokens")
    assert_same_chat(plain, streamed)


@pytest.mark.parametrize("max_tokens", [64, 4])
def test_chat_tool_call(chat_server, max_tokens):
    """A forced call, and one cut off by max_tokens."""
    plain, streamed = both(chat_server, "/v1/chat/completions", tool_call(max_tokens))
    assert_same_chat(plain, streamed)
    if max_tokens == 64:
        skip_if_call_unfinished(plain)
        assert calls_of(plain["choices"][0]), plain
        assert plain["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_parallel_tool_calls(chat_server):
    plain, streamed = both(chat_server, "/v1/chat/completions", PARALLEL)
    assert_same_chat(plain, streamed)
    skip_if_call_unfinished(plain)
    assert calls_of(plain["choices"][0]), plain


def test_chat_n2_seeded(chat_server):
    require_two_slots(chat_server)
    plain, streamed = both(chat_server, "/v1/chat/completions", N2)
    assert [c["index"] for c in streamed["choices"]] == [0, 1]
    assert_same_chat(plain, streamed)


def completions_stream(server, data: dict) -> dict:
    """/v1/completions streamed, assembled: text, finish_reason and logprob tokens per index."""
    out: dict = {"choices": {}, "usage": None}
    for chunk in server.make_stream_request("POST", "/v1/completions", {**data, "stream": True,
                                                                       "stream_options": {"include_usage": True}}):
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        for ch in chunk["choices"]:
            c = out["choices"].setdefault(ch["index"], {"text": "", "finish_reason": None, "tokens": []})
            c["text"] += ch["text"]
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
            if ch.get("logprobs"):
                c["tokens"] += ch["logprobs"]["tokens"]
    return out


def completions_both(server) -> tuple[dict, dict]:
    data = {"model": server.model_id(), **COMPLETION}
    return server.ok("/v1/completions", data), completions_stream(server, data)


def test_v1_completions(chat_server):
    plain, streamed = completions_both(chat_server)
    a, b = plain["choices"][0], streamed["choices"][0]
    assert a["text"] == b["text"] and a["text"]
    assert a["finish_reason"] == b["finish_reason"]
    assert a["logprobs"]["tokens"] == b["tokens"]
    for key in ("prompt_tokens", "completion_tokens"):
        assert plain["usage"][key] == streamed["usage"][key]


# --------------------------------------------------------------------------- refserver
CHAT_CASES = {"text": TEXT, "eos": EOS, "tool_call": tool_call(64), "tool_call_cut": tool_call(4),
              "parallel_tool_calls": PARALLEL, "n2": N2}
EXPECTED_FINISH = {"eos": "stop", "tool_call": "tool_calls", "tool_call_cut": "length"}


@pytest.mark.profile("refserver")
@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_one_logprob_entry_per_generated_token(chat_server, case):
    """Streamed and not, a chat reply has one logprob entry per generated token
    (`usage.completion_tokens`), the EOS token and tool-call markup included; the embedded
    model stops by itself, finishes its forced calls, and is cut where asked."""
    if case == "n2":
        chat_server.require_slots(2)
    for body in both(chat_server, "/v1/chat/completions", CHAT_CASES[case]):
        if case in EXPECTED_FINISH:
            assert {c["finish_reason"] for c in body["choices"]} == {EXPECTED_FINISH[case]}, body
        if case in ("tool_call", "parallel_tool_calls"):
            assert calls_of(body["choices"][0]), body
        n_entries = sum(len(c["logprobs"]["content"]) for c in body["choices"])
        assert n_entries == body["usage"]["completion_tokens"], "one logprob entry per generated token"


@pytest.mark.profile("refserver")
def test_v1_completions_one_logprob_entry_per_generated_token(chat_server):
    """Streamed and not, /v1/completions has one logprob token per generated token."""
    plain, streamed = completions_both(chat_server)
    assert len(plain["choices"][0]["logprobs"]["tokens"]) == plain["usage"]["completion_tokens"]
    assert len(streamed["choices"][0]["tokens"]) == streamed["usage"]["completion_tokens"]


@pytest.mark.profile("llamacpp")
def test_native_completion(chat_server):
    data = {"prompt": "Once upon a time", "n_predict": 40, "temperature": 0, "n_probs": 2}
    plain = chat_server.ok("/completion", data)
    chunks = list(chat_server.make_stream_request("POST", "/completion", {**data, "stream": True}))
    final = chunks[-1]
    assert final["stop"] is True
    text = "".join(c["content"] for c in chunks)
    assert text == plain["content"] and text
    for key in ("stop_type", "tokens_predicted", "tokens_evaluated", "truncated"):
        assert plain[key] == final[key], key
    streamed_probs = [p["id"] for c in chunks[:-1] for p in c.get("completion_probabilities", [])]
    assert streamed_probs == [p["id"] for p in plain["completion_probabilities"]]
    assert len(streamed_probs) == plain["tokens_predicted"]
