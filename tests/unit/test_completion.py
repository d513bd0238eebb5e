"""Native /completion and OpenAI /v1/completions (llama.cpp test_completion.py, CONTRACT §2, §3)."""

from __future__ import annotations

import pytest
from utils import ServerError, ServerPreset, error_of, match_regex

completion = pytest.mark.feature("completion")
streaming = pytest.mark.feature("streaming")
sampling = pytest.mark.feature("sampling")
prompt_cache = pytest.mark.feature("prompt_cache")
pytestmark = pytest.mark.profile("openai")

STORY = "Once upon a time, there was a little cat named Tom."
STORY_REGEX = r"Tom"


def n_tokens(server, text: str) -> int:
    return len(server.tokenize(text, add_special=True))


@completion
@pytest.mark.parametrize("n_predict,return_tokens", [(8, False), (64, True)])
@pytest.mark.profile("llamacpp")
def test_completion(chat_server, n_predict, return_tokens):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": n_predict, "return_tokens": return_tokens,
                                          "ignore_eos": True})
    assert isinstance(body["content"], str) and body["content"]
    assert body["timings"]["prompt_n"] + body["timings"]["cache_n"] == n_tokens(chat_server, STORY)
    assert body["timings"]["predicted_n"] == n_predict
    assert body["tokens_predicted"] == n_predict
    assert body["tokens_evaluated"] == n_tokens(chat_server, STORY)
    assert body["truncated"] is False
    assert isinstance(body["has_new_line"], bool)
    assert body["stop"] is True
    assert body["stop_type"] == "limit"
    assert isinstance(body["id_slot"], int)
    if return_tokens:
        assert len(body["tokens"]) == n_predict
        assert all(isinstance(t, int) for t in body["tokens"])
    else:
        assert body["tokens"] == []


@completion
@pytest.mark.golden
@pytest.mark.profile("refserver")
def test_completion_story_golden(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 32, "temperature": 0})
    assert match_regex(STORY_REGEX, body["content"]), body["content"]


@completion
@pytest.mark.profile("llamacpp")
def test_completion_response_shape(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 4})
    for key in ("index", "content", "tokens", "id_slot", "stop", "model", "tokens_predicted",
                "tokens_evaluated", "generation_settings", "prompt", "has_new_line", "truncated",
                "stop_type", "stopping_word", "tokens_cached", "timings"):
        assert key in body, key
    for key in ("cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
                "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second"):
        assert key in body["timings"], key
    assert STORY in body["prompt"]
    settings = body["generation_settings"]
    for key in ("n_predict", "temperature", "top_k", "top_p", "min_p", "seed", "samplers", "logit_bias"):
        assert key in settings, key


@completion
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_completion_model_is_alias(chat_server):
    assert chat_server.ok("/completion", {"prompt": STORY, "n_predict": 1})["model"] == chat_server.alias


@streaming
@pytest.mark.parametrize("n_predict", [8, 64])
@pytest.mark.profile("llamacpp")
def test_completion_stream(chat_server, n_predict):
    stream = chat_server.make_stream_request("POST", "/completion", {
        "prompt": STORY, "n_predict": n_predict, "stream": True, "ignore_eos": True})
    content = ""
    events = stream.read_all()
    assert events, "no events"
    last = events[-1]
    for ev in events[:-1]:
        assert ev["stop"] is False
        assert isinstance(ev["content"], str)
        assert ev["tokens"] and all(isinstance(t, int) for t in ev["tokens"])
        content += ev["content"]
    content += last["content"]
    assert last["stop"] is True
    assert last["stop_type"] == "limit"
    assert last["timings"]["predicted_n"] == n_predict
    assert last["generation_settings"]["n_predict"] == n_predict
    assert content, "empty stream content"
    assert stream.done is False, "the native endpoint sends no [DONE]"


@streaming
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_completion_stream_settings_reflect_server(chat_server):
    """A request without n_predict gets the server's -n; the seed defaults to the server's --seed."""
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": STORY, "stream": True}).read_all()
    settings = events[-1]["generation_settings"]
    assert settings["n_predict"] == chat_server.n_predict
    assert settings["seed"] == chat_server.seed
    assert events[-1]["tokens_predicted"] <= chat_server.n_predict


@streaming
@pytest.mark.profile("llamacpp")
def test_stream_vs_non_stream(chat_server):
    data = {"prompt": STORY, "n_predict": 24, "temperature": 0}
    body = chat_server.ok("/completion", data)
    events = chat_server.make_stream_request("POST", "/completion", {**data, "stream": True}).read_all()
    assert "".join(ev["content"] for ev in events) == body["content"]


@streaming
@pytest.mark.needs_flags
@pytest.mark.extension
@pytest.mark.parametrize("interval_ms", [0, 1000])
@pytest.mark.profile("refserver")
def test_stream_interval_keeps_every_event(server_pool, interval_ms):
    """--stream-interval-ms only groups packets: 0 sends each token alone, 1000 holds a busy
    stream's tokens (first token and end still go at once); the events are the same."""
    def make():
        server = ServerPreset.chat()
        server.stream_interval_ms = interval_ms
        return server

    server = server_pool(f"interval-{interval_ms}", make)
    data = {"prompt": STORY, "n_predict": 40, "temperature": 0, "ignore_eos": True}
    body = server.ok("/completion", data)
    events = server.make_stream_request("POST", "/completion", {**data, "stream": True}).read_all()
    tokens = [t for ev in events[:-1] for t in ev["tokens"]]
    assert len(tokens) == 40 == events[-1]["tokens_predicted"]
    assert all(len(ev["tokens"]) == 1 for ev in events[:-1]), "one SSE event per token"
    assert "".join(ev["content"] for ev in events) == body["content"]


@completion
@pytest.mark.profile("llamacpp")
def test_long_prompt_is_rejected(chat_server):
    slot_ctx = chat_server.props()["default_generation_settings"]["n_ctx"]
    prompt = "The cat sat on the mat. " * (slot_ctx // 3)
    res = chat_server.post("/completion", {"prompt": prompt, "n_predict": 4, "cache_prompt": False})
    assert res.status_code == 400
    error_of(res)


@completion
@pytest.mark.profile("llamacpp")
def test_json_prompt_object(chat_server):
    body = chat_server.ok("/completion", {"prompt": {"prompt_string": STORY}, "n_predict": 4, "temperature": 0})
    plain = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 4, "temperature": 0})
    assert body["content"] == plain["content"]


@completion
@pytest.mark.profile("llamacpp")
def test_multimodal_data_on_text_model_is_400(chat_server):
    res = chat_server.post("/completion", {"prompt": {"prompt_string": STORY, "multimodal_data": ["aGVsbG8="]},
                                           "n_predict": 4})
    assert res.status_code == 400
    error_of(res)


@completion
@pytest.mark.profile("llamacpp")
def test_completion_with_token_ids(chat_server):
    ids = chat_server.tokenize(STORY, add_special=True)
    by_ids = chat_server.ok("/completion", {"prompt": ids, "n_predict": 8, "temperature": 0})
    by_text = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 8, "temperature": 0})
    assert by_ids["content"] == by_text["content"]
    assert by_ids["tokens_evaluated"] == len(ids)


@completion
@pytest.mark.parametrize("second", ["ids", "text", "object"])
@pytest.mark.profile("llamacpp")
def test_completion_list_of_prompts(chat_server, second):
    ids = chat_server.tokenize(STORY, add_special=True)
    other = {"ids": ids, "text": STORY, "object": {"prompt_string": STORY}}[second]
    res = chat_server.post("/completion", {"prompt": [ids, other], "n_predict": 8, "temperature": 0})
    assert res.status_code == 200, res.body
    assert isinstance(res.body, list) and len(res.body) == 2
    assert res.body[0]["content"] == res.body[1]["content"]
    assert {r["index"] for r in res.body} == {0, 1}


@completion
@pytest.mark.profile("llamacpp")
def test_completion_mixed_prompt_is_one(chat_server):
    ids_a = chat_server.tokenize("Once upon a time", add_special=False)
    ids_b = chat_server.tokenize(" named Tom", add_special=False)
    res = chat_server.post("/completion", {"prompt": [*ids_a, ", there was a cat", *ids_b, "."],
                                           "n_predict": 4})
    assert res.status_code == 200, res.body
    assert isinstance(res.body, dict)
    assert isinstance(res.body["content"], str)


@completion
@pytest.mark.profile("llamacpp")
def test_completions_alias_path(chat_server):
    data = {"prompt": STORY, "n_predict": 4, "temperature": 0}
    assert chat_server.ok("/completions", data)["content"] == chat_server.ok("/completion", data)["content"]


@completion
@pytest.mark.parametrize("fields,expected", [
    (["content", "generation_settings/n_predict", "prompt"], {"content", "generation_settings/n_predict", "prompt"}),
    (["content", "no_such/field"], {"content"}),
])
@pytest.mark.profile("llamacpp")
def test_response_fields(chat_server, fields, expected):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 4, "response_fields": fields})
    assert set(body) == expected
    if "generation_settings/n_predict" in expected:
        assert body["generation_settings/n_predict"] == 4


@completion
@pytest.mark.profile("llamacpp")
def test_response_fields_empty_gives_full_body(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 4, "response_fields": []})
    assert "generation_settings" in body and "timings" in body and "content" in body


@completion
@pytest.mark.profile("llamacpp")
def test_n_cmpl_over_slots_is_400(chat_server):
    slots = chat_server.props()["total_slots"]
    res = chat_server.post("/completion", {"prompt": STORY, "n_predict": 2, "n_cmpl": slots + 1})
    assert res.status_code == 400
    error_of(res)


@completion
@pytest.mark.profile("llamacpp")
def test_id_slot_is_honoured(chat_server):
    slots = chat_server.props()["total_slots"]
    for i in range(min(slots, 2)):
        assert chat_server.ok("/completion", {"prompt": STORY, "n_predict": 2, "id_slot": i})["id_slot"] == i


@completion
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_invalid_id_slot_is_400(chat_server):
    res = chat_server.post("/completion", {"prompt": STORY, "n_predict": 2, "id_slot": 99})
    assert res.status_code == 400
    error_of(res)


@completion
@pytest.mark.parametrize("body", [{}, {"prompt": 123}, {"prompt": STORY, "n_predict": "x"},
                                  {"prompt": STORY, "temperature": "hot"}, {"prompt": [[1.5]]}])
@pytest.mark.profile("llamacpp")
def test_invalid_completion_request_is_400(chat_server, body):
    res = chat_server.post("/completion", body)
    assert res.status_code == 400, res.body
    assert error_of(res)["type"] == "invalid_request_error"


# --------------------------------------------------------------------------- sampling
@sampling
@pytest.mark.profile("llamacpp")
def test_stop_word(chat_server):
    base = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 32, "temperature": 0})["content"]
    words = [w for w in base.split() if len(w) >= 3]
    if not words:
        pytest.skip(f"no word to stop on in {base!r}")
    stop = words[len(words) // 2]
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 32, "temperature": 0, "stop": [stop]})
    assert body["stop_type"] == "word"
    assert body["stopping_word"] == stop
    assert body["content"] == base[:base.index(stop)]


@sampling
@pytest.mark.profile("llamacpp")
def test_ignore_eos_reaches_limit(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 20, "ignore_eos": True})
    assert body["tokens_predicted"] == 20
    assert body["stop_type"] == "limit"


@sampling
@pytest.mark.parametrize("form", ["ids_list", "ids_dict", "str_list", "str_dict"])
@pytest.mark.profile("llamacpp")
def test_logit_bias_forms(chat_server, form):
    base = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 16, "temperature": 0,
                                          "return_tokens": True})
    pieces = [(t, chat_server.ok("/detokenize", {"tokens": [t]})["content"]) for t in base["tokens"]]
    named = [(t, p) for t, p in pieces if p.strip() and chat_server.tokenize(p) == [t]]
    if form.startswith("str") and not named:
        pytest.skip(f"no generated token can be named by its text in {base['content']!r}")
    banned_id, piece = named[0] if named else pieces[0]
    key = banned_id if form.startswith("ids") else piece
    bias = [[key, -100]] if form.endswith("list") else {str(key): -100}
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 16, "temperature": 0,
                                          "return_tokens": True, "logit_bias": bias})
    assert banned_id not in body["tokens"]
    assert body["tokens"] != base["tokens"]


@sampling
@pytest.mark.profile("llamacpp")
def test_logit_bias_false_bans(chat_server):
    base = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 8, "temperature": 0,
                                          "return_tokens": True})
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 8, "temperature": 0,
                                          "return_tokens": True, "logit_bias": [[base["tokens"][0], False]]})
    assert base["tokens"][0] not in body["tokens"]


@sampling
@pytest.mark.profile("llamacpp")
def test_dry_mirostat_top_n_sigma_are_echoed_and_seeded(chat_server):
    data = {"prompt": STORY, "n_predict": 24, "seed": 11, "temperature": 1.0, "top_n_sigma": 1.5,
            "dry_multiplier": 0.8, "dry_base": 0.5, "dry_allowed_length": 3, "dry_penalty_last_n": 64,
            "dry_sequence_breakers": ["\n", "."], "mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}
    first = chat_server.ok("/completion", data)
    settings = first["generation_settings"]
    assert settings["top_n_sigma"] == 1.5 and settings["mirostat"] == 2
    assert settings["mirostat_tau"] == 3.0 and settings["mirostat_eta"] == pytest.approx(0.2)
    assert settings["dry_multiplier"] == pytest.approx(0.8) and settings["dry_allowed_length"] == 3
    assert settings["dry_base"] == 1.75, "a DRY base below 1 is replaced by the default"
    assert settings["dry_penalty_last_n"] == 64 and settings["dry_sequence_breakers"] == ["\n", "."]
    assert chat_server.ok("/completion", data)["content"] == first["content"]
    for version in (1, 2):
        body = chat_server.ok("/completion", {**data, "mirostat": version, "dry_multiplier": 0})
        assert body["tokens_predicted"] > 0


@sampling
@pytest.mark.golden
@pytest.mark.profile("refserver")
def test_dry_bans_what_would_extend_a_repetition(chat_server):
    """The prompt repeats a phrase; greedy continues it with the token that followed the
    phrase before, and DRY must penalise exactly that token."""
    prompt = STORY + " Tom liked to fly kites." * 3 + " Tom liked to"
    ids = chat_server.tokenize(prompt, add_special=True)
    tail = ids[-3:]
    follower = next(ids[j + 3] for j in range(len(ids) - 4, -1, -1) if ids[j:j + 3] == tail)
    data = {"prompt": prompt, "n_predict": 4, "temperature": 0, "return_tokens": True}
    plain = chat_server.ok("/completion", data)["tokens"]
    assert plain[0] == follower, "precondition: greedy repeats the phrase"
    dry = chat_server.ok("/completion", {**data, "dry_multiplier": 2.0, "dry_allowed_length": 2})["tokens"]
    assert dry[0] != follower
    off = chat_server.ok("/completion", {**data, "dry_multiplier": 2.0, "dry_penalty_last_n": 0})["tokens"]
    assert off == plain, "dry_penalty_last_n 0 turns DRY off"
    # A breaker that spans tokens (" liked" + " to") and ends the prompt: the repetition
    # cannot reach back across it, so nothing is penalised (llama.cpp's head + tail match).
    assert len(chat_server.tokenize(" liked to")) >= 2, "precondition: the breaker spans tokens"
    broken = chat_server.ok("/completion", {**data, "dry_multiplier": 2.0, "dry_allowed_length": 2,
                                            "dry_sequence_breakers": [" liked to"]})["tokens"]
    assert broken == plain


@sampling
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_dry_breaker_count_is_bounded(chat_server):
    """Each breaker is looked up in the whole vocabulary when a list is first seen: more
    than 64 is a 400 that names the field, not a stalled server."""
    data = {"prompt": STORY, "n_predict": 1, "dry_multiplier": 0.8}
    res = chat_server.post("/completion", {**data, "dry_sequence_breakers": [f"b{i}" for i in range(65)]})
    assert res.status_code == 400 and "dry_sequence_breakers" in error_of(res)["message"]
    chat_server.ok("/completion", {**data, "dry_sequence_breakers": [f"b{i}" for i in range(64)]})
    res = chat_server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                                                    "dry_sequence_breakers": ["x"] * 65})
    assert res.status_code == 400


@sampling
@pytest.mark.profile("llamacpp")
def test_samplers_field_is_echoed(chat_server):
    body = chat_server.ok("/completion", {"prompt": STORY, "n_predict": 2, "samplers": ["top_k", "temperature"]})
    assert list(body["generation_settings"]["samplers"]) == ["top_k", "temperature"]


@sampling
@pytest.mark.profile("llamacpp")
def test_temperature_zero_is_greedy_and_repeatable(chat_server):
    data = {"prompt": STORY, "n_predict": 16, "temperature": 0, "seed": 1}
    a = chat_server.ok("/completion", data)["content"]
    b = chat_server.ok("/completion", {**data, "seed": 2})["content"]
    assert a == b


# --------------------------------------------------------------------------- progress, timings
@streaming
@pytest.mark.profile("llamacpp")
def test_timings_per_token(chat_server):
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": STORY, "n_predict": 6, "stream": True, "timings_per_token": True}).read_all()
    partial = [ev for ev in events if not ev["stop"]]
    assert partial
    for ev in partial:
        assert "timings" in ev
        assert ev["timings"]["predicted_n"] >= 1


@streaming
@pytest.mark.profile("llamacpp")
def test_return_progress(chat_server):
    prompt = STORY + " He liked to play in the garden with his friend, a small brown dog. " * 3
    events = chat_server.make_stream_request("POST", "/completion", {
        "prompt": prompt, "n_predict": 2, "stream": True, "return_progress": True, "cache_prompt": False}).read_all()
    progress = [ev["prompt_progress"] for ev in events if "prompt_progress" in ev]
    assert progress, "no prompt_progress events"
    assert len({p["total"] for p in progress}) == 1
    assert len({p["cache"] for p in progress}) == 1
    processed = [p["processed"] for p in progress]
    assert processed == sorted(processed)
    assert progress[0]["cache"] == progress[0]["processed"]
    assert progress[-1]["processed"] == progress[-1]["total"]


# --------------------------------------------------------------------------- prompt cache
@prompt_cache
@pytest.mark.profile("llamacpp")
def test_prompt_cache_growing_prefixes(chat_server):
    chat_server.require_slots(2)
    parts = [STORY, " Tom had a red ball.", " One day, he lost it in the garden.", " He looked for it everywhere."]
    prompt = ""
    for part in parts:
        prompt += part
        body = chat_server.ok("/completion", {"prompt": prompt, "n_predict": 4, "id_slot": 1, "ignore_eos": True})
        t = body["timings"]
        assert t["prompt_n"] + t["cache_n"] == n_tokens(chat_server, prompt)
        assert t["predicted_n"] == 4
    assert t["cache_n"] > 0


@prompt_cache
@pytest.mark.profile("llamacpp")
def test_prompt_cache_repeat_same_output(chat_server):
    data = {"prompt": STORY + " Tom was hungry.", "n_predict": 8, "temperature": 0, "id_slot": 0}
    first = chat_server.ok("/completion", data)
    second = chat_server.ok("/completion", data)
    assert second["timings"]["cache_n"] > 0
    assert second["timings"]["prompt_n"] < first["timings"]["prompt_n"] + first["timings"]["cache_n"]
    assert second["content"] == first["content"]


@prompt_cache
@pytest.mark.profile("llamacpp")
def test_cache_prompt_false_reuses_nothing(chat_server):
    data = {"prompt": STORY + " Tom was sleepy.", "n_predict": 2, "id_slot": 0}
    chat_server.ok("/completion", data)
    body = chat_server.ok("/completion", {**data, "cache_prompt": False})
    assert body["timings"]["cache_n"] == 0


# --------------------------------------------------------------------------- /v1/completions
@completion
@pytest.mark.profile("llamacpp")
def test_v1_completions(chat_server):
    body = chat_server.ok("/v1/completions", {"prompt": STORY, "max_tokens": 8, "ignore_eos": True})
    assert body["object"] == "text_completion"
    assert "cmpl" in body["id"]
    assert body["system_fingerprint"].startswith("b")
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str) and choice["text"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] == n_tokens(chat_server, STORY)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@streaming
@pytest.mark.profile("llamacpp")
def test_v1_completions_stream(chat_server):
    stream = chat_server.make_stream_request("POST", "/v1/completions", {
        "prompt": STORY, "max_tokens": 8, "stream": True, "ignore_eos": True, "temperature": 0})
    events = stream.read_all()
    assert stream.done, "no data: [DONE]"
    assert all(ev["object"] == "text_completion" for ev in events)
    assert len({ev["id"] for ev in events}) == 1
    for ev in events[:-1]:
        assert ev["choices"][0]["finish_reason"] is None
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 8
    text = "".join(ev["choices"][0]["text"] for ev in events)
    plain = chat_server.ok("/v1/completions", {"prompt": STORY, "max_tokens": 8, "ignore_eos": True,
                                               "temperature": 0})
    assert text == plain["choices"][0]["text"]


@streaming
def test_v1_completions_stream_chunks(chat_server):
    """Streamed /v1/completions: `text_completion` chunks of one id; finish_reason is null on
    every chunk but the last, then `data: [DONE]`."""
    stream = chat_server.make_stream_request("POST", "/v1/completions", {
        "model": chat_server.model_id(), "prompt": STORY, "max_tokens": 8, "stream": True})
    events = stream.read_all()
    assert stream.done, "no data: [DONE]"
    assert {ev["object"] for ev in events} == {"text_completion"}
    assert len({ev["id"] for ev in events}) == 1
    finishes = [ch["finish_reason"] for ev in events for ch in ev["choices"]]
    assert all(f is None for f in finishes[:-1]) and finishes[-1] in ("stop", "length"), finishes


@completion
@pytest.mark.parametrize("stop", ["\n", ["\n", "zzzz"]])
def test_v1_completions_stop_string_or_list(chat_server, stop):
    body = chat_server.ok("/v1/completions", {"prompt": STORY, "max_tokens": 16, "stop": stop})
    assert "\n" not in body["choices"][0]["text"]


@completion
@pytest.mark.parametrize("extra", [{"best_of": 2}, {"suffix": "The end."}])
@pytest.mark.profile("refserver")
def test_v1_completions_unsupported_is_400(chat_server, extra):
    """best_of and suffix are refused with a 400 rather than ignored (refserver's choice;
    OpenAI supports them)."""
    res = chat_server.post("/v1/completions", {"prompt": STORY, "max_tokens": 4, **extra})
    assert res.status_code == 400
    error_of(res)


@completion
def test_v1_completions_missing_prompt_is_400(chat_server):
    """`prompt` is required: a request without it is a 400 with the error object."""
    res = chat_server.post("/v1/completions", {"max_tokens": 4})
    assert res.status_code == 400
    error_of(res)


@completion
@pytest.mark.profile("llamacpp")
def test_v1_completions_context_exceeded_stream_is_plain_error(chat_server):
    slot_ctx = chat_server.props()["default_generation_settings"]["n_ctx"]
    with pytest.raises(ServerError) as exc:
        chat_server.make_stream_request("POST", "/v1/completions", {
            "prompt": "The cat sat on the mat. " * slot_ctx, "max_tokens": 4, "stream": True})
    assert exc.value.status_code == 400
    assert exc.value.body["error"]["type"] == "exceed_context_size_error"


@completion
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_server_n_predict_is_the_default_a_request_overrides():
    """-n is the default for requests that give no n_predict / max_tokens; a request's own
    value wins, above or below it (llama.cpp's current behaviour, CONTRACT §0)."""
    server = ServerPreset.one_slot()
    server.n_predict = 5
    server.start()
    body = server.ok("/completion", {"prompt": STORY, "ignore_eos": True})
    assert (body["tokens_predicted"], body["generation_settings"]["n_predict"], body["stop_type"]) == (5, 5, "limit")
    for path, key in (("/completion", "n_predict"), ("/v1/completions", "max_tokens"),
                      ("/v1/chat/completions", "max_tokens"), ("/v1/chat/completions", "max_completion_tokens")):
        for value in (9, 3):
            data = {"prompt": STORY} if "chat" not in path else {"messages": [{"role": "user", "content": STORY}]}
            body = server.ok(path, {**data, key: value, "ignore_eos": True})
            n = body["usage"]["completion_tokens"] if "usage" in body else body["tokens_predicted"]
            assert n == value, (path, key, body)


@completion
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_long_prompt_in_batch_chunks(server_pool):
    """A prompt many times --batch-size is pre-filled in chunks and fully accounted for."""
    server = server_pool("long-context", ServerPreset.long_context)
    prompt = " ".join([STORY, "Tom had a red ball and a blue hat."] * 40)
    n_prompt = n_tokens(server, prompt)
    assert n_prompt > 8 * server.n_batch
    events = server.make_stream_request("POST", "/completion", {
        "prompt": prompt, "n_predict": 4, "ignore_eos": True, "stream": True, "return_progress": True}).read_all()
    final = events[-1]
    assert final["timings"]["prompt_n"] + final["timings"]["cache_n"] == n_prompt
    assert final["tokens_predicted"] == 4
    progress = [ev["prompt_progress"] for ev in events if "prompt_progress" in ev]
    assert len(progress) >= 2, "no progress between prefill chunks"
    assert progress[-1]["processed"] == n_prompt
