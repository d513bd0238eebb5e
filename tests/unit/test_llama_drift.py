"""Where llama.cpp's current server answers differently from refserver's older shapes
(issue 17): each test states llama.cpp's behaviour, so it holds for both servers."""

from __future__ import annotations

import time

import pytest
from utils import TARGET, ServerProcess

completion = pytest.mark.feature("completion")
streaming = pytest.mark.feature("streaming")
chat = pytest.mark.feature("chat")
basic = pytest.mark.feature("basic")
metrics = pytest.mark.feature("metrics")
pytestmark = pytest.mark.profile("llamacpp")

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun."
LONG = STORY + " He liked to play in the garden with his friend, a small brown dog." * 3
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@completion
def test_final_chunk_reports_adaptive_p_settings(chat_server):
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": STORY, "n_predict": 2, "stream": True}).read_all()
    settings = events[-1]["generation_settings"]
    assert settings["adaptive_target"] < 0  # the sampler is off by default (negative target)
    assert settings["adaptive_decay"] == pytest.approx(0.9)


@chat
@pytest.mark.parametrize("stream", [False, True])
def test_request_verbose_returns_the_native_object(chat_server, stream):
    body = {"messages": CHAT, "max_tokens": 3, "verbose": True, "stream": stream}
    if stream:
        events = chat_server.make_stream_request("POST", "/v1/chat/completions", body).read_all()
        verbose = [ev["__verbose"] for ev in events if "__verbose" in ev]
        assert len(verbose) == 1
        verbose = verbose[0]
    else:
        verbose = chat_server.ok("/v1/chat/completions", body)["__verbose"]
    assert verbose["tokens_predicted"] >= 1 and "generation_settings" in verbose
    plain = chat_server.ok("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3})
    assert "__verbose" not in plain


@basic
def test_slots_next_token_is_a_list(chat_server):
    for slot in chat_server.slots():
        assert isinstance(slot["next_token"], list) and slot["next_token"]
        assert "n_decoded" in slot["next_token"][0]


@streaming
@pytest.mark.parametrize("path", ["/completion", "/v1/chat/completions"])
def test_progress_chunks_carry_timings(chat_server, path):
    body = {"n_predict": 2, "stream": True, "return_progress": True, "cache_prompt": False}
    body.update({"prompt": LONG} if path == "/completion" else {"messages": [{"role": "user", "content": LONG}]})
    events = chat_server.make_stream_request("POST", path, body).read_all()
    progress = [ev for ev in events if "prompt_progress" in ev]
    assert progress
    if not TARGET.runs_refserver:  # llama.cpp's README documents prompt_progress, not timings, here
        return
    for ev in progress:
        timings = ev["timings"]
        assert timings["prompt_n"] == ev["prompt_progress"]["processed"] - ev["prompt_progress"]["cache"]
        assert timings["predicted_n"] == 0


@completion
def test_one_predicted_token_has_no_rate(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 1, "cache_prompt": False})
    assert body["timings"]["predicted_n"] == 1
    assert body["timings"]["predicted_per_second"] == 0.0
    two = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 2, "ignore_eos": True})
    assert two["timings"]["predicted_per_second"] > 0


@metrics
def test_metrics_has_process_start_time_header(chat_server):
    res = chat_server.get("/metrics")
    assert res.status_code == 200
    started = int(res.headers["Process-Start-Time-Unix"])
    if TARGET.runs_refserver:  # the header's value is documented nowhere (this llama-server's is not Unix time)
        assert time.time() - 24 * 3600 < started <= time.time()


@completion
@pytest.mark.needs_flags
@pytest.mark.golden
def test_prompt_plus_generated_tokens_fill_the_slot():
    """A slot of 256 tokens, an 8-token prompt, n_predict -1: llama.cpp generates 248."""
    server = ServerProcess(model=TARGET.model, n_ctx=256, n_slots=1)
    server.start()
    prompt = server.tokenize(STORY)[:8]
    body = server.ok("/completion", {"prompt": prompt, "n_predict": -1, "ignore_eos": True})
    assert body["tokens_evaluated"] == 8
    assert body["tokens_predicted"] == 248 and body["truncated"] is True
