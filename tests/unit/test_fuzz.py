"""Property-based fuzzing of every POST endpoint (issue 8).

Each example is one request to one of the POST routes: a body built from the route's
own fields (plausible and hostile values mixed), an arbitrary JSON document, or a
valid body whose bytes were mutated.  Whatever comes in, the server must answer below
500; every non-200 answer carries `{"error": {"code", "message", "type"}}` with code ==
the HTTP status; a stream never carries a 5xx error event; and the server keeps serving.

The server runs with `-n 4`, so no example generates more than 4 tokens whatever it
asks for; 500 derandomized examples (reproducible in CI) take some 15-30 s on two cores.
The longer campaign against a running server is `tools/fuzz_campaign.py`.
"""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from utils import ServerProcess, client_error_status_ok, response_error, small_model

fuzz = pytest.mark.feature("fuzz")
pytestmark = pytest.mark.profile("refserver")  # CONTRACT §6: never a 5xx, always the envelope

GENERATING = ["/completion", "/completions", "/v1/completions", "/v1/chat/completions", "/chat/completions"]
POST_ROUTES = GENERATING + ["/tokenize", "/detokenize", "/apply-template", "/infill"]

# --------------------------------------------------------------------------- values
TEXT = st.text(max_size=24)
HOSTILE_TEXT = st.sampled_from(["", "\x00", "\ud800", "\udfff\ud800", "<|im_start|>", "<s>", "</s>", "{{ 7*7 }}",
                                "{% for x in range(10**9) %}{% endfor %}", "\u202e", "\uffff", "💥" * 50,
                                "a" * 5000, "null", "\r\n\r\n", "<tool_call>", "\\", '"'])
INTS = st.one_of(st.integers(-3, 8), st.sampled_from([2**31, -2**31, 2**63, -2**63 - 1, 2**64, 10**40]))
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308]))
LEAF = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, HOSTILE_TEXT)
ANY_JSON = st.recursive(LEAF, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(TEXT, kids, max_size=4)), max_leaves=10)

TOKEN_IDS = st.lists(st.one_of(st.integers(0, 300), INTS), max_size=6)
PROMPT = st.one_of(TEXT, HOSTILE_TEXT, TOKEN_IDS, st.lists(st.one_of(TEXT, st.integers(0, 300)), max_size=4),
                   st.lists(st.one_of(TEXT, TOKEN_IDS), max_size=3),
                   st.fixed_dictionaries({"prompt_string": TEXT}), ANY_JSON)
CONTENT = st.one_of(TEXT, HOSTILE_TEXT, st.none(),
                    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]),
                                                    "text": st.one_of(TEXT, ANY_JSON)}), max_size=3),
                    ANY_JSON)
TOOL = st.fixed_dictionaries({
    "type": st.sampled_from(["function", "x"]),
    "function": st.one_of(st.fixed_dictionaries({
        "name": st.one_of(st.sampled_from(["get_weather", "f"]), TEXT),
        "parameters": st.one_of(st.just({"type": "object", "properties": {"city": {"type": "string"}}}),
                                ANY_JSON)}), ANY_JSON)})
TOOL_CALL = st.fixed_dictionaries({"id": TEXT, "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": TEXT,
                                                                      "arguments": st.one_of(TEXT, ANY_JSON)})})
MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), TEXT, ANY_JSON),
     "content": CONTENT},
    optional={"tool_calls": st.one_of(st.lists(TOOL_CALL, max_size=2), ANY_JSON), "name": TEXT,
              "tool_call_id": TEXT, "reasoning_content": TEXT})
MESSAGES = st.one_of(st.lists(MESSAGE, min_size=1, max_size=3), st.lists(MESSAGE, max_size=0), ANY_JSON)
SCHEMA = st.one_of(st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
                   st.just({"type": "string", "pattern": "(a|b)*"}), st.just({"$ref": "#/nope"}),
                   st.just({"type": "array", "items": {"$ref": "#"}}), ANY_JSON)
GRAMMAR = st.one_of(st.just('root ::= "yes" | "no"'), st.just("root ::= root"), st.just("root ::= ["),
                    TEXT, ANY_JSON)

SAMPLING = {
    "temperature": st.one_of(FLOATS, ANY_JSON), "top_k": st.one_of(INTS, ANY_JSON),
    "top_p": st.one_of(FLOATS, ANY_JSON), "min_p": st.one_of(FLOATS, ANY_JSON),
    "typical_p": FLOATS, "repeat_penalty": FLOATS, "repeat_last_n": INTS, "presence_penalty": FLOATS,
    "frequency_penalty": FLOATS, "mirostat": INTS, "xtc_probability": FLOATS, "dynatemp_range": FLOATS,
    "seed": st.one_of(INTS, ANY_JSON), "stop": st.one_of(TEXT, HOSTILE_TEXT, st.lists(TEXT, max_size=4), ANY_JSON),
    "ignore_eos": st.one_of(st.booleans(), ANY_JSON), "n_probs": st.one_of(INTS, ANY_JSON),
    "logit_bias": st.one_of(st.dictionaries(st.one_of(st.integers(-5, 600).map(str), TEXT),
                                            st.one_of(FLOATS, st.booleans(), st.none()), max_size=3),
                            st.lists(st.lists(st.one_of(st.integers(-5, 600), TEXT, FLOATS, st.booleans()),
                                              max_size=3), max_size=3), ANY_JSON),
    "samplers": st.one_of(st.lists(st.sampled_from(["top_k", "top_p", "temperature", "min_p", "xyz"]),
                                   max_size=4), st.text(alphabet="kpmtxyzd", max_size=6), ANY_JSON),
    "grammar": GRAMMAR, "json_schema": SCHEMA, "id_slot": st.one_of(INTS, ANY_JSON),
    "cache_prompt": st.one_of(st.booleans(), ANY_JSON), "t_max_predict_ms": st.one_of(INTS, ANY_JSON),
    "post_sampling_probs": st.one_of(st.booleans(), ANY_JSON), "min_keep": INTS,
    "return_progress": st.booleans(), "timings_per_token": st.booleans(), "lora": st.one_of(st.just([]), ANY_JSON),
    "speculative.n_max": INTS, "dry_multiplier": FLOATS, "n_keep": INTS,
    "stream": st.one_of(st.booleans(), ANY_JSON),
    "n_predict": st.one_of(st.integers(-1, 3), INTS, ANY_JSON),
    "max_tokens": st.one_of(st.integers(-1, 3), INTS, ANY_JSON),
}
FIELDS = {
    "native": {**SAMPLING, "prompt": PROMPT, "n_cmpl": INTS, "n": INTS, "return_tokens": st.booleans(),
               "response_fields": st.one_of(st.lists(TEXT, max_size=3), ANY_JSON), "logprobs": INTS,
               "multimodal_data": ANY_JSON},
    "oai": {**SAMPLING, "prompt": PROMPT, "n": INTS, "logprobs": st.one_of(INTS, ANY_JSON), "echo": ANY_JSON,
            "best_of": INTS, "suffix": TEXT, "model": TEXT, "user": ANY_JSON,
            "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), ANY_JSON)},
    "chat": {**SAMPLING, "messages": MESSAGES, "n": INTS, "logprobs": st.one_of(st.booleans(), ANY_JSON),
             "top_logprobs": INTS, "max_completion_tokens": st.one_of(st.integers(-1, 3), INTS, ANY_JSON),
             "tools": st.one_of(st.lists(TOOL, max_size=2), ANY_JSON),
             "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "bogus"]),
                                      st.just({"type": "function", "function": {"name": "get_weather"}}), ANY_JSON),
             "parallel_tool_calls": st.one_of(st.booleans(), ANY_JSON),
             "response_format": st.one_of(st.just({"type": "json_object"}), st.just({"type": "text"}),
                                          st.fixed_dictionaries({"type": st.just("json_schema"),
                                                                 "json_schema": st.fixed_dictionaries(
                                                                     {"schema": SCHEMA})}), ANY_JSON),
             "chat_template_kwargs": st.one_of(st.dictionaries(TEXT, ANY_JSON, max_size=2), ANY_JSON),
             "add_generation_prompt": st.one_of(st.booleans(), ANY_JSON),
             "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), ANY_JSON)},
    "tokenize": {"content": st.one_of(TEXT, HOSTILE_TEXT, ANY_JSON), "add_special": st.one_of(st.booleans(), ANY_JSON),
                 "parse_special": st.one_of(st.booleans(), ANY_JSON), "with_pieces": st.one_of(st.booleans(), ANY_JSON)},
    "detokenize": {"tokens": st.one_of(TOKEN_IDS, ANY_JSON)},
    "infill": {**SAMPLING, "input_prefix": st.one_of(TEXT, ANY_JSON), "input_suffix": st.one_of(TEXT, ANY_JSON),
               "input_extra": st.one_of(st.lists(st.fixed_dictionaries({"filename": TEXT, "text": TEXT}),
                                                 max_size=2), ANY_JSON), "prompt": st.one_of(TEXT, ANY_JSON)},
}
KIND = {"/completion": "native", "/completions": "native", "/v1/completions": "oai",
        "/v1/chat/completions": "chat", "/chat/completions": "chat", "/apply-template": "chat",
        "/tokenize": "tokenize", "/detokenize": "detokenize", "/infill": "infill"}
REQUIRED = {"native": ["prompt"], "oai": ["prompt"], "chat": ["messages"], "tokenize": ["content"],
            "detokenize": ["tokens"], "infill": ["input_prefix", "input_suffix"]}
VALID = {"native": {"prompt": "Once", "n_predict": 2}, "oai": {"prompt": "Once", "max_tokens": 2},
         "chat": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
         "tokenize": {"content": "Once upon"}, "detokenize": {"tokens": [1, 2, 3]},
         "infill": {"input_prefix": "def f(", "input_suffix": ")", "n_predict": 2}}
SPLICE = [b"NaN", b"-Infinity", b"1e999", b"[" * 64, b"}" * 8, b"\x00", b"\xff", b'"\\ud800"', b"null",
          b"99999999999999999999999", b'"\\u0000"', b",", b":", b'"', b"\\"]


@st.composite
def structured(draw, path: str):
    kind = KIND[path]
    fields = FIELDS[kind]
    names = sorted(fields)
    body = {}
    for name in REQUIRED[kind]:
        if draw(st.integers(0, 9)) > 0:  # mostly present
            body[name] = draw(fields[name])
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=6)):
        body[name] = draw(fields[name])
    if draw(st.integers(0, 19)) == 0:
        body[draw(TEXT)] = draw(ANY_JSON)  # an unknown field
    return body


@st.composite
def mutated(draw, path: str) -> bytes:
    data = bytearray(json.dumps(VALID[KIND[path]]).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(SPLICE))
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data = data[:pos]
    return bytes(data)


@st.composite
def cases(draw):
    path = draw(st.sampled_from(POST_ROUTES))
    mode = draw(st.integers(0, 9))
    if mode == 0:
        return path, json.dumps(draw(ANY_JSON)).encode()
    if mode == 1:
        return path, draw(mutated(path))
    body = draw(structured(path))
    return path, json.dumps(body).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def fuzz_target(server_pool):
    def make():
        return ServerProcess(model=small_model(), n_ctx=1024, n_slots=4, n_batch=64, n_predict=4, seed=42, jinja=True)
    return server_pool("fuzz-target", make)


def check_response(path: str, body: bytes, res: requests.Response) -> None:
    where = f"POST {path} {body[:300]!r}"
    # 501: /infill on a model without FIM tokens (CONTRACT §1)
    assert client_error_status_ok(res.status_code) or (path == "/infill" and res.status_code == 501), \
        f"{where} -> {res.status_code} {res.text[:300]}"
    ctype = res.headers.get("Content-Type", "")
    if res.status_code != 200:
        response_error(res, where)
        return
    if ctype.startswith("text/event-stream"):
        for line in res.text.splitlines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            if isinstance(event, dict) and "error" in event:
                code = event["error"].get("code", 500)
                assert code < 500, f"{where} -> error event {event}"
    else:
        res.json()  # a 200 is JSON


@fuzz
@settings(max_examples=500, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cases())
def test_fuzz_every_post_endpoint(fuzz_target, case):
    path, body = case
    res = requests.post(f"{fuzz_target.url}{path}", data=body, timeout=60,
                        headers={"Content-Type": "application/json"})
    check_response(path, body, res)


@fuzz
def test_server_healthy_after_fuzzing(fuzz_target):
    assert fuzz_target.get("/health").status_code == 200
    assert fuzz_target.wait_slots_idle(2.0)
    body = fuzz_target.ok("/completion", {"prompt": "Once upon a time", "n_predict": 3})
    assert body["tokens_predicted"] <= 3
    chat = fuzz_target.ok("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                    "max_tokens": 2})
    assert chat["choices"][0]["message"]["role"] == "assistant"


# --------------------------------------------------------------------------- Responses and Messages
CAP = st.one_of(st.integers(0, 3), ANY_JSON)
INPUT_ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "developer", "x"]),
                           "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries(
                               {"type": st.sampled_from(["input_text", "output_text", "input_image", "x"]),
                                "text": st.one_of(TEXT, ANY_JSON)}), max_size=2), ANY_JSON)},
                          optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": TEXT, "name": TEXT,
                           "arguments": st.one_of(TEXT, ANY_JSON)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.one_of(TEXT, ANY_JSON),
                           "output": st.one_of(TEXT, ANY_JSON)}),
    ANY_JSON)
BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "thinking", "x"]), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": TEXT, "name": TEXT, "input": ANY_JSON}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": TEXT,
                           "content": st.one_of(TEXT, ANY_JSON), "is_error": ANY_JSON}),
    ANY_JSON)
AGENT_FIELDS = {
    "/v1/responses": {
        "input": st.one_of(TEXT, HOSTILE_TEXT, st.lists(INPUT_ITEM, max_size=3), ANY_JSON),
        "instructions": st.one_of(TEXT, ANY_JSON), "max_output_tokens": CAP, "stream": st.one_of(st.booleans(), ANY_JSON),
        "tools": st.one_of(st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]),
                                                          "name": TEXT, "parameters": SCHEMA}), max_size=2), ANY_JSON),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), ANY_JSON),
        "text": st.one_of(st.fixed_dictionaries({"format": st.one_of(st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "x"]), "schema": SCHEMA}), ANY_JSON)}),
            ANY_JSON),
        "previous_response_id": st.one_of(TEXT, ANY_JSON), "store": st.one_of(st.booleans(), ANY_JSON),
        "reasoning": ANY_JSON, "metadata": ANY_JSON, "temperature": st.one_of(FLOATS, ANY_JSON),
        "grammar": GRAMMAR, "background": st.one_of(st.booleans(), ANY_JSON),
        "include": st.one_of(st.lists(st.sampled_from(["message.output_text.logprobs", "reasoning.encrypted_content",
                                                       "x"]), max_size=2), ANY_JSON),
        "top_logprobs": st.one_of(st.integers(-1, 21), ANY_JSON)},
    "/v1/messages": {
        "model": st.one_of(TEXT, ANY_JSON), "max_tokens": CAP,
        "messages": st.one_of(st.lists(st.fixed_dictionaries({
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": st.one_of(TEXT, HOSTILE_TEXT, st.lists(BLOCK, max_size=3), ANY_JSON)}), max_size=3), ANY_JSON),
        "system": st.one_of(TEXT, st.lists(BLOCK, max_size=2), ANY_JSON),
        "tools": st.one_of(st.lists(st.fixed_dictionaries({"name": TEXT, "input_schema": SCHEMA}), max_size=2),
                           ANY_JSON),
        "tool_choice": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]),
                                                        "name": TEXT}), ANY_JSON),
        "thinking": st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled", "x"]),
                                                     "budget_tokens": st.one_of(st.integers(-1, 3), ANY_JSON)}),
                              ANY_JSON),
        "stop_sequences": ANY_JSON, "stream": st.one_of(st.booleans(), ANY_JSON), "top_k": ANY_JSON,
        "temperature": st.one_of(FLOATS, ANY_JSON), "output_config": ANY_JSON},
}
AGENT_FIELDS["/v1/messages/count_tokens"] = AGENT_FIELDS["/v1/messages"]


@st.composite
def agent_cases(draw):
    path = draw(st.sampled_from(sorted(AGENT_FIELDS)))
    fields = AGENT_FIELDS[path]
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=6))
    body = {name: draw(fields[name]) for name in names}
    return path, json.dumps(body).encode("utf-8", "surrogatepass")


def check_agent_response(path: str, body: bytes, res: requests.Response) -> None:
    """Below 500 (CONTRACT §6's allowance for other servers aside); errors in the route's own
    shape; a stream carries no error event."""
    where = f"POST {path} {body[:300]!r}"
    assert client_error_status_ok(res.status_code), f"{where} -> {res.status_code} {res.text[:300]}"
    anthropic = path.startswith("/v1/messages")
    if res.status_code != 200:
        err = res.json()
        if anthropic:
            assert err["type"] == "error" and isinstance(err["error"]["message"], str), where
        else:
            response_error(res, where)
        return
    for line in res.text.splitlines():
        if line.startswith("data:"):
            event = json.loads(line[5:])
            assert event.get("type") not in ("error", "response.failed"), f"{where} -> {event}"


@fuzz
@settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=agent_cases())
def test_fuzz_responses_and_messages(fuzz_target, case):
    path, body = case
    res = requests.post(f"{fuzz_target.url}{path}", data=body, timeout=60, headers={"Content-Type": "application/json"})
    check_agent_response(path, body, res)
