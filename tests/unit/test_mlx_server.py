"""mlx-lm's tests/test_server.py over real HTTP: TestServer, TestServerWithDraftModel and
TestKeepalive (the last against the real server, not a copy of its callback); plus
speculative decoding's exactness (the draft never changes temperature-0 output)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from utils import TARGET, ServerPreset

mlx = pytest.mark.feature("mlx")
speculative = pytest.mark.feature("speculative")
keepalive = pytest.mark.feature("keepalive")
pytestmark = pytest.mark.profile("openai")

CHAT = [{"role": "user", "content": "Hello!"}]
# mlx-lm's own sampling fields, which its tests send: OpenAI documents them not, accepting
# them is refserver's choice, so the variant that sends them is in the refserver profile
MLX_FIELDS = pytest.mark.parametrize("extra", [
    pytest.param({}, id="openai"),
    pytest.param({"repetition_penalty": 1.1, "repetition_context_size": 20}, id="mlx_fields",
                 marks=pytest.mark.profile("refserver"))])


# --------------------------------------------------------------------------- TestServer
@mlx
@MLX_FIELDS
def test_handle_completions(chat_server, extra):
    data = {"model": chat_server.model_id(), "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0.5,
            "top_p": 0.9, "seed": 999, "stop": "stop sequence", **extra}
    first = chat_server.post("/v1/completions", data)
    assert first.status_code == 200
    assert "id" in first.body and "choices" in first.body
    second = chat_server.post("/v1/completions", data)
    assert first.body["choices"][0]["text"] == second.body["choices"][0]["text"]


@mlx
@MLX_FIELDS
@pytest.mark.parametrize("content", ["Hello!", [{"type": "text", "text": "Hello!"}]], ids=["string", "parts"])
def test_handle_chat_completions(chat_server, content, extra):
    res = chat_server.post("/v1/chat/completions", {
        "model": chat_server.model_id(), "max_tokens": 10, "temperature": 0.7, "top_p": 0.85, **extra,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": content}]})
    assert res.status_code == 200
    assert "id" in res.body and "choices" in res.body


@mlx
@MLX_FIELDS
def test_handle_chat_completions_with_null_tool_content(chat_server, extra):
    res = chat_server.post("/v1/chat/completions", {
        "model": chat_server.model_id(), "max_tokens": 10, "temperature": 0.7, "top_p": 0.85, **extra,
        "messages": [
            {"role": "user", "content": "what is 2+3?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "123", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
            {"role": "tool", "content": "5", "tool_call_id": "123"},
        ]})
    assert res.status_code == 200
    assert "id" in res.body and "choices" in res.body


@mlx
def test_handle_models(chat_server):
    res = chat_server.get("/v1/models")
    assert res.status_code == 200
    assert res.body["object"] == "list"
    assert len(res.body["data"]) > 0
    model = res.body["data"][0]
    assert "id" in model and model["object"] == "model" and "created" in model


@mlx
@pytest.mark.profile("llamacpp")
def test_options_preflight(chat_server):
    res = chat_server.make_request("OPTIONS", "/v1/chat/completions", headers={"Origin": "http://x.example"})
    assert res.status_code in (200, 204)


# --------------------------------------------------------------------------- TestServerWithDraftModel
@pytest.fixture(scope="module")
def draft_server(server_pool):
    server = ServerPreset.chat_with_draft()
    if TARGET.starts_servers and not TARGET.server_bin and not Path(server.model_draft).is_dir():
        pytest.skip(f"draft model {server.model_draft} is not there yet")
    return server_pool("draft", ServerPreset.chat_with_draft)


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_draft_completions(draft_server):
    res = draft_server.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 10, "ignore_eos": True})
    assert res.status_code == 200
    assert "id" in res.body and "choices" in res.body
    assert res.body["usage"]["completion_tokens"] > 0


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # -md/--model-draft is llama-server's
def test_draft_chat_completions(draft_server):
    res = draft_server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 10})
    assert res.status_code == 200
    assert res.body["usage"]["completion_tokens"] > 0
    assert res.body["choices"][0]["message"]["role"] == "assistant"


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # -md/--model-draft is llama-server's
def test_draft_streaming(draft_server):
    stream = draft_server.make_stream_request("POST", "/v1/chat/completions", {
        "messages": CHAT, "max_tokens": 10, "stream": True})
    events = stream.read_all()
    assert stream.done and events
    for ev in events:
        assert len(ev["choices"]) == 1 and "delta" in ev["choices"][0]


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # -md/--model-draft is llama-server's
def test_draft_prompt_cache_shared_prefix(draft_server):
    system = {"role": "system", "content": "You are a helpful assistant who answers questions briefly."}
    for question in ("What is the capital of France?", "What is the capital of Spain?"):
        res = draft_server.post("/v1/chat/completions", {"messages": [system, {"role": "user", "content": question}],
                                                         "max_tokens": 10})
        assert res.status_code == 200
        assert res.body["choices"][0]["message"]["content"] is not None


@speculative
@pytest.mark.needs_flags
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.profile("llamacpp")
def test_draft_greedy_output_identical(chat_server, draft_server, stream):
    data = {"messages": [{"role": "user", "content": "Tell me a story about a cat named Tom."}],
            "max_tokens": 48, "temperature": 0, "stream": stream}
    plain = chat_server.make_any_request("POST", "/v1/chat/completions", data)
    spec = draft_server.make_any_request("POST", "/v1/chat/completions", data)
    assert spec["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_draft_tokens_accepted(draft_server):
    body = draft_server.ok("/completion", {"prompt": "Once upon a time, there was a little cat named Tom.",
                                           "n_predict": 48, "temperature": 0, "ignore_eos": True})
    t = body["timings"]
    assert t["draft_n"] > 0
    assert 0 < t["draft_n_accepted"] <= t["draft_n"]


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_draft_seeded_sampling_reproducible(draft_server):
    data = {"prompt": "Once upon a time", "n_predict": 32, "temperature": 1.0, "seed": 77, "ignore_eos": True}
    assert draft_server.ok("/completion", data)["content"] == draft_server.ok("/completion", data)["content"]


@speculative
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # -md/--model-draft is llama-server's
def test_draft_parallel_streams(draft_server):
    from utils import parallel_function_calls

    def run(seed):
        return draft_server.make_any_request("POST", "/v1/chat/completions", {
            "messages": CHAT, "max_tokens": 12, "stream": True, "seed": seed})
    results = parallel_function_calls([(run, (s,)) for s in range(2)])
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in results)


# --------------------------------------------------------------------------- TestKeepalive
@pytest.fixture(scope="module")
def keepalive_server(server_pool):
    def make():
        server = ServerPreset.one_slot()
        server.keepalive, server.n_ctx, server.n_predict, server.context_shift = 1, 2048, -1, True
        return server
    return server_pool("keepalive", make)


def _occupy(server):
    """Hold the only slot until the returned stream is closed (an endless generation)."""
    return server.hold_slot()


@keepalive
@pytest.mark.needs_flags
@pytest.mark.parametrize("path,data", [
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2}),
    ("/completion", {"prompt": "Hello", "n_predict": 2}),
], ids=["chat", "native"])
@pytest.mark.profile("refserver")  # --sse-keepalive is refserver's flag
def test_keepalive_while_queued(keepalive_server, path, data):
    busy = _occupy(keepalive_server)
    release = threading.Timer(3.5, busy.close)
    release.start()
    try:
        stream = keepalive_server.make_stream_request("POST", path, {**data, "stream": True}, comments=True)
        items = list(stream)
    finally:
        release.cancel()
        busy.close()
    kinds = ["comment" if hasattr(i, "text") else "data" for i in items]
    assert "data" in kinds, "no data after the slot was freed"
    before_first = kinds.index("data")
    # The wait lasts until the timer frees the slot (3.5 s): a comment is owed for every
    # full second of it, minus one for the phase of the clock.
    first_data = next(t for kind, _, t in stream.items if kind == "data")
    waited = first_data - stream.started
    assert waited >= 1.0, f"the request was not queued behind the busy slot (waited {waited:.2f} s)"
    assert before_first >= max(1, int(waited) - 1), \
        f"{before_first} keepalive comment(s) in {waited:.2f} s of waiting with --sse-keepalive 1"
    gaps = [b.t - a.t for a, b in zip(stream.comments, stream.comments[1:])]
    assert all(g < 2.5 for g in gaps), f"keepalive gaps {gaps} with --sse-keepalive 1"


@keepalive
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_no_keepalive_in_non_stream(keepalive_server):
    busy = _occupy(keepalive_server)
    release = threading.Timer(2.5, busy.close)
    release.start()
    try:
        res = keepalive_server.post("/completion", {"prompt": "Hello", "n_predict": 2})
    finally:
        release.cancel()
        busy.close()
    assert res.status_code == 200
    assert isinstance(res.body, dict), "non-stream body is not plain JSON"
    json.dumps(res.body)


@keepalive
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_keepalive_client_gone_is_quiet(keepalive_server):
    """A queued stream abandoned by its client is dropped; the server keeps serving."""
    busy = _occupy(keepalive_server)
    try:
        stream = keepalive_server.make_stream_request("POST", "/completion", {
            "prompt": "Hello", "n_predict": 1500, "ignore_eos": True, "stream": True}, comments=True)
        it = iter(stream)
        assert hasattr(next(it), "text")  # a keepalive comment
        stream.close()
    finally:
        busy.close()
    assert keepalive_server.wait_slots_idle(1.5)
    assert keepalive_server.ok("/completion", {"prompt": "Hi", "n_predict": 2})["tokens_predicted"] >= 1


@keepalive
@pytest.mark.needs_flags
@pytest.mark.profile("refserver")
def test_keepalive_with_draft_model(server_pool):
    """mlx-lm loses keepalives with a draft model; refserver must not."""
    def make():
        server = ServerPreset.chat_with_draft()
        server.n_slots, server.n_ctx, server.n_predict, server.keepalive = 1, 2048, -1, 1
        server.context_shift = True
        return server

    probe = make()
    if TARGET.starts_servers and not TARGET.server_bin and not Path(probe.model_draft).is_dir():
        pytest.skip(f"draft model {probe.model_draft} is not there yet")
    server = server_pool("draft-keepalive", make)
    busy = _occupy(server)
    release = threading.Timer(3.0, busy.close)
    release.start()
    try:
        stream = server.make_stream_request("POST", "/v1/chat/completions", {
            "messages": CHAT, "max_tokens": 2, "stream": True})
        stream.read_all()
    finally:
        release.cancel()
        busy.close()
    first_data = next(t for kind, _, t in stream.items if kind == "data")
    waited = first_data - stream.started
    assert waited >= 1.0, f"the request was not queued behind the busy slot (waited {waited:.2f} s)"
    assert len([c for c in stream.comments if c.t < first_data]) >= max(1, int(waited) - 1)
