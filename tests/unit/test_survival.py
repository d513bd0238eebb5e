"""No request may take the engine down (issue 17).

- The four reproducers that killed the engine thread behind a healthy /health, and the
  same overflows with values inside float32's range (the sampler must saturate, as
  llama.cpp's C floats do); afterwards the engine still generates.
- A seeded fuzz of 300 combinations of 2-5 extreme sampling fields against one server:
  every answer is a 200 with strict (finite) JSON or a 4xx naming a field sent.
- Non-finite numbers (`1e999`) in every float field of the three generating routes: 400.
- One request failing inside the engine fails alone (engine unit test, fake backend).
- A forced engine failure: /health 503 and the process exits non-zero (a watchdog).
- Sampler unit tests: every stage total on extreme parameters (finite in, finite out).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from engine_helpers import Collector, make_engine, run
from utils import ServerProcess, response_error, small_model, wait_until

from refserver import errors
from refserver.engine.sampling import Sampler
from refserver.engine.types import DEFAULT_SAMPLERS, Failed, Finished, GenerationRequest, SamplingParams

sampling = pytest.mark.feature("sampling")
pytestmark = pytest.mark.profile("refserver")  # issue 17: refserver's own bounds and survival
limits = pytest.mark.feature("limits")
engine_feature = pytest.mark.feature("engine")

REPRODUCERS = [  # the issue's four, each of which ended the engine thread
    {"prompt": "Hi", "n_predict": 4, "mirostat": 1, "mirostat_tau": 600},
    {"prompt": "a b a b a b a b a b", "n_predict": 4, "dry_multiplier": 0.8, "dry_base": 1e39},
    {"prompt": "the the the the the the the the", "n_predict": 4, "top_n_sigma": 1, "dry_multiplier": 1e308},
    {"prompt": "Hi", "n_predict": 4, "dynatemp_range": 1e38, "dynatemp_exponent": -1e308},
]
SATURATING = [  # the same overflows with every value inside float32's range: a 200
    {"prompt": "a b a b a b a b a b", "n_predict": 4, "dry_multiplier": 0.8, "dry_base": 1e38},
    {"prompt": "the the the the the the the the", "n_predict": 4, "top_n_sigma": 1, "dry_multiplier": 3e38},
    {"prompt": "Hi", "n_predict": 4, "dynatemp_range": 1e38, "dynatemp_exponent": -3e38},
    {"prompt": "Hi", "n_predict": 4, "mirostat": 2, "mirostat_tau": 3e38, "mirostat_eta": 3e38},
    {"prompt": "Hi", "n_predict": 4, "temperature": 1e-38, "repeat_penalty": 0, "frequency_penalty": -3e38},
]


def strict_json(text: str):
    """json.loads that fails on Infinity / NaN (Python's parser takes them by default)."""
    def reject(name):
        raise AssertionError(f"non-finite number {name} in a response: {text[:300]}")
    return json.loads(text, parse_constant=reject)


def check_answer(res: requests.Response, body: dict, where: str) -> None:
    """A 200 with finite JSON, or a 4xx envelope whose message names a field sent."""
    assert res.status_code < 500, f"{where} -> {res.status_code} {res.text[:300]}"
    if res.status_code == 200:
        strict_json(res.text)
        return
    err = response_error(res, where)
    named = [k for k in body if k in err["message"]]
    assert named, f"{where}: the error names none of the fields sent: {err['message']!r}"


def assert_serving(server: ServerProcess) -> None:
    res = server.post("/completion", {"prompt": "Once upon", "n_predict": 2})
    assert res.status_code == 200, res.body
    assert server.get("/health").status_code == 200


@pytest.fixture(scope="module")
def target(server_pool):
    return server_pool("survival", lambda: ServerProcess(
        model=small_model(), n_ctx=1024, n_slots=4, n_batch=64, n_predict=4, seed=42, temperature=0.8))


@sampling
@pytest.mark.extension
@pytest.mark.parametrize("body", REPRODUCERS + SATURATING)
def test_extreme_sampling_leaves_the_engine_serving(target, body):
    res = requests.post(f"{target.url}/completion", json=body, timeout=60)
    check_answer(res, body, f"/completion {body}")
    if body in SATURATING:
        assert res.status_code == 200, res.text[:300]
    assert_serving(target)


# --------------------------------------------------------------------------- fuzz
FLOAT_FIELDS = ["temperature", "dynatemp_range", "dynatemp_exponent", "top_p", "min_p", "typical_p", "top_n_sigma",
                "xtc_probability", "xtc_threshold", "mirostat_tau", "mirostat_eta", "repeat_penalty",
                "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base"]
INT_FIELDS = ["top_k", "mirostat", "repeat_last_n", "dry_allowed_length", "dry_penalty_last_n", "n_probs", "min_keep"]
EXTREME_FLOATS = [0.0, -0.0, 1e-320, 1e-38, 0.5, 1.0, 2.0, 600.0, 1e38, 3.4e38, 1e39, 1e308,
                  -1.0, -600.0, -1e38, -1e308]
EXTREME_INTS = [0, 1, 2, -1, -2, 100, 2**31, 10**9, -10**9, 2**63]
FUZZ_ROUTES = ["/completion", "/v1/completions", "/v1/chat/completions"]


def extreme_body(rng: random.Random) -> tuple[str, dict]:
    """A generating request with 2-5 sampling fields set to extreme values."""
    route = rng.choice(FUZZ_ROUTES)
    body: dict = {"messages": [{"role": "user", "content": "Hi"}]} if "chat" in route else {
        "prompt": rng.choice(["Hi", "the the the the the the", "a b a b a b a b"])}
    body["max_tokens" if route != "/completion" else "n_predict"] = rng.choice([1, 3])
    for name in rng.sample(FLOAT_FIELDS + INT_FIELDS + ["logit_bias", "post_sampling_probs"], rng.randint(2, 5)):
        if name in FLOAT_FIELDS:
            body[name] = rng.choice(EXTREME_FLOATS)
        elif name in INT_FIELDS:
            body[name] = rng.choice(EXTREME_INTS)
        elif name == "logit_bias":
            body[name] = {str(rng.randint(0, 300)): rng.choice(EXTREME_FLOATS) for _ in range(rng.randint(1, 3))}
        else:
            body[name] = True
    if rng.random() < 0.25:
        body["stream"] = True
    return route, body


@sampling
@pytest.mark.extension
def test_fuzz_extreme_sampling_combinations(target):
    rng = random.Random(17)
    cases = [extreme_body(rng) for _ in range(300)]

    def one(case):
        route, body = case
        res = requests.post(f"{target.url}{route}", json=body, timeout=60)
        where = f"{route} {json.dumps(body)}"
        if res.status_code == 200 and body.get("stream"):
            for line in res.text.splitlines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    event = strict_json(line[5:])
                    assert "error" not in event, f"{where}: error event {event}"
            return
        check_answer(res, body, where)

    with ThreadPoolExecutor(4) as pool:  # the server's 4 slots
        list(pool.map(one, cases))
    assert_serving(target)


# --------------------------------------------------------------------------- non-finite
NATIVE_FLOATS = FLOAT_FIELDS + ["speculative.p_min"]
ROUTE_BODIES = {
    "/completion": '{"prompt": "Hi", "n_predict": 1, "%s": %s}',
    "/v1/completions": '{"prompt": "Hi", "max_tokens": 1, "%s": %s}',
    "/v1/chat/completions": '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "%s": %s}',
}


@sampling
@pytest.mark.extension
@pytest.mark.parametrize("route", list(ROUTE_BODIES))
def test_non_finite_numbers_are_a_400_naming_the_field(target, route):
    for field in NATIVE_FLOATS:
        for number in ("1e999", "-1e999"):
            raw = ROUTE_BODIES[route] % (field, number)
            res = requests.post(f"{target.url}{route}", data=raw, timeout=30,
                                headers={"Content-Type": "application/json"})
            assert res.status_code == 400, f"{route} {raw} -> {res.status_code} {res.text[:200]}"
            assert field in response_error(res, raw)["message"], res.text
    raw = ROUTE_BODIES[route] % ("logit_bias", '{"5": 1e999}')
    res = requests.post(f"{target.url}{route}", data=raw, timeout=30)
    assert res.status_code == 400 and "logit_bias" in response_error(res, raw)["message"], res.text
    assert_serving(target)


# --------------------------------------------------------------------------- watchdog
@limits
@pytest.mark.extension
@pytest.mark.needs_flags  # starts its own server with a fault injected
def test_a_dead_engine_makes_health_503_and_the_process_exit(monkeypatch):
    monkeypatch.setenv("REFSERVER_INJECT_ENGINE_FAULT", "1")
    server = ServerProcess(model=small_model(), n_ctx=512, n_slots=2, n_predict=4).start()
    try:
        assert server.get("/health").status_code == 200  # the engine dies at its first work
        res = server.post("/completion", {"prompt": "Hi", "n_predict": 2})
        assert res.status_code == 503, res.body

        try:  # 503 until the process is gone; by then nothing listens any more
            health = requests.get(f"{server.url}/health", timeout=2).status_code
        except requests.ConnectionError:
            health = None
        assert health in (503, None), health
        assert wait_until(lambda: not server.is_running(), 30, interval=0.1), "the process did not exit"
        assert server.process.returncode not in (0, None), server.process.returncode
        assert "engine failed" in server.stderr_tail()
    finally:
        server.stop()


# --------------------------------------------------------------------------- engine isolation
@engine_feature
def test_a_request_failing_in_the_engine_fails_alone(monkeypatch):
    original = Sampler.sample

    def sample(self, raw, allowed=None):
        if self.seed == 666:
            raise RuntimeError("boom")
        return original(self, raw, allowed)

    monkeypatch.setattr(Sampler, "sample", sample)
    eng = make_engine(n_slots=2)
    try:
        doomed, other = Collector(), Collector()
        eng.submit(GenerationRequest([1, 5, 6], SamplingParams(seed=666), n_predict=8), doomed)
        eng.submit(GenerationRequest([1, 5, 6], SamplingParams(seed=1), n_predict=8), other)
        failed = doomed.wait()[-1]
        assert isinstance(failed, Failed) and isinstance(failed.error, errors.ServerError)
        assert "boom" in failed.error.message
        assert isinstance(other.wait()[-1], Finished)
        assert eng.alive
        assert isinstance(run(eng, GenerationRequest([1, 5], SamplingParams(seed=2), n_predict=3))[-1], Finished)
        assert all(not s["is_processing"] for s in eng.slots())
    finally:
        eng.shutdown()


@engine_feature
def test_a_dead_engine_loop_reports_to_its_watchers():
    eng = make_engine(n_slots=1, inject_fault=True)
    seen = []
    eng.watch(seen.append)
    c = Collector()
    eng.submit(GenerationRequest([1, 5, 6], SamplingParams(), n_predict=2), c)
    ev = c.wait()
    assert isinstance(ev[-1], Failed)
    assert wait_until(lambda: bool(seen), 5, interval=0.01)
    assert not eng.alive and isinstance(eng.failure, RuntimeError)
    late = []
    eng.watch(late.append)  # a watcher that comes after the death hears of it at once
    assert late == [eng.failure]


# --------------------------------------------------------------------------- sampler unit
EXTREME_PARAMS = [
    {"mirostat": 1, "mirostat_tau": 600}, {"mirostat": 1, "temperature": 1e308},
    {"mirostat": 2, "mirostat_tau": -1e308, "mirostat_eta": 1e308},
    {"dry_multiplier": 0.8, "dry_base": 1e39}, {"dry_multiplier": -1.0, "dry_base": 1e308},
    {"top_n_sigma": 1, "dry_multiplier": 1e308}, {"top_n_sigma": 1e308, "dry_multiplier": -1e308},
    {"dynatemp_range": 1e38, "dynatemp_exponent": -1e308}, {"temperature": 1e308, "dynatemp_range": 1.0},
    {"temperature": 1e-320, "min_p": 1.0}, {"repeat_penalty": 0.0, "frequency_penalty": -1e308,
                                            "presence_penalty": 1e308},
    {"typical_p": 0.0, "min_keep": 2**63}, {"xtc_probability": 1.0, "xtc_threshold": -1e308},
    {"top_k": 2**63, "top_p": 1e-320, "min_keep": 0},
]


@sampling
@pytest.mark.parametrize("params", EXTREME_PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_sampler_is_total(params):
    vocab = 300
    history = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6]
    sampler = Sampler(SamplingParams(**params), vocab, [0], seed=3, history=history, dry_breakers={10: ((),)})
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e4, 1e30):
        out = sampler.sample((rng.normal(size=vocab) * scale).astype(np.float32))
        assert 0 <= out.token < vocab
        assert len(out.cand_ids) >= 1 and np.all(np.isfinite(out.cand_probs)), out.cand_probs[:5]
        assert abs(float(out.cand_probs.sum()) - 1.0) < 1e-6
        assert np.isfinite(sampler.mu)
        sampler.accept(out.token)


@sampling
def test_inf_logits_take_all_the_probability():
    """A +inf logit (a penalty that saturated) is the sure pick, not dropped as 'not finite'."""
    raw = np.zeros(50, dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=1.0, samplers=DEFAULT_SAMPLERS, top_k=0, top_p=1.0, min_p=0.0,
                                     logit_bias=((7, 3e38), (7, 3e38))), 50, [0], seed=1)
    for _ in range(5):
        assert sampler.sample(raw).token == 7


# --------------------------------------------------------------------------- grammars
RECURSIVE_SCHEMA = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
FAILING_GRAMMARS = {
    "huge_repeat": {"grammar": "start: /a{65535}{65535}/"},
    "recursive_required_ref": {"json_schema": RECURSIVE_SCHEMA},
    "recursive_required_defs": {"json_schema": {"$ref": "#/$defs/a", "$defs": {"a": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}}}},
}


@pytest.mark.feature("structured_output")
@pytest.mark.extension
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", list(FAILING_GRAMMARS))
def test_grammar_failing_at_its_first_token_is_a_short_400(target, name, stream):
    body = {"prompt": "Hi", "n_predict": 4, "stream": stream, **FAILING_GRAMMARS[name]}
    res = requests.post(f"{target.url}/completion", json=body, timeout=120)
    assert res.status_code == 400, res.text[:500]
    message = response_error(res, name)["message"]
    assert "grammar" in message and "<state>" not in message and len(message) < 500, message
    assert_serving(target)


@pytest.mark.feature("structured_output")
@pytest.mark.extension
def test_recursive_schema_in_response_format_is_a_400(target):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": RECURSIVE_SCHEMA}}}
    res = requests.post(f"{target.url}/v1/chat/completions", json=body, timeout=120)
    assert res.status_code == 400, res.text[:500]
    assert "<state>" not in response_error(res)["message"]


# --------------------------------------------------------------------------- bounds
BOUNDS = {  # request -> (route, the field and the bound its 400 must name)
    "prompts": ("/completion", {"prompt": ["x"] * 20000, "n_predict": 1}, "prompt", "1024"),
    "prompts_v1": ("/v1/completions", {"prompt": ["x"] * 1025, "max_tokens": 1}, "prompt", "1024"),
    "logit_bias_entries": ("/completion", {"prompt": "x", "n_predict": 1,
                                           "logit_bias": {f"w{i}": 1.0 for i in range(200_000)}}, "logit_bias", "4096"),
    "logit_bias_pairs": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
                                                  "logit_bias": [[i % 300, 1.0] for i in range(4097)]},
                         "logit_bias", "4096"),
    "logit_bias_tokens": ("/completion", {"prompt": "x", "n_predict": 1,
                                          "logit_bias": {"a b c d " * 2000: 1.0}}, "logit_bias", "4096"),
    "n_probs": ("/completion", {"prompt": "x", "n_predict": 1, "n_probs": 257}, "n_probs", "256"),
    "stop_count": ("/completion", {"prompt": "x", "n_predict": 1, "stop": ["s"] * 65}, "stop", "64"),
    "stop_length": ("/v1/completions", {"prompt": "x", "max_tokens": 1, "stop": ["s" * 1025]}, "stop", "1024"),
    "samplers": ("/completion", {"prompt": "x", "n_predict": 1, "samplers": ["top_k"] * 65}, "samplers", "64"),
    "tokenize_size": ("/tokenize", {"content": "a" * ((1 << 20) + 1)}, "content", "1048576"),
    "tokenize_pieces": ("/tokenize", {"content": " ".join(f"{i:x}" for i in range(40000)), "with_pieces": True},
                        "with_pieces", "65536"),
    "detokenize": ("/detokenize", {"tokens": [1] * ((1 << 20) + 1)}, "tokens", "1048576"),
}


@limits
@pytest.mark.extension
@pytest.mark.parametrize("name", list(BOUNDS))
def test_request_bounds_are_a_400_naming_the_bound(target, name):
    route, body, field, bound = BOUNDS[name]
    res = requests.post(f"{target.url}{route}", json=body, timeout=120)
    assert res.status_code == 400, f"{name}: {res.status_code} {res.text[:300]}"
    message = response_error(res, name)["message"]
    assert field in message and bound in message, message
    assert_serving(target)


@limits
@pytest.mark.extension
def test_just_within_the_bounds_is_served(target):
    body = {"prompt": ["x"] * 8, "n_predict": 1, "logit_bias": [[i % 300, 0.5] for i in range(4096)],
            "stop": ["s" * 1024] * 64, "n_probs": 256}
    res = requests.post(f"{target.url}/completion", json=body, timeout=120)
    assert res.status_code == 200, res.text[:300]
    assert len(strict_json(res.text)) == 8
    pieces = requests.post(f"{target.url}/tokenize", json={"content": "Once upon a time", "with_pieces": True},
                           timeout=30)
    assert pieces.status_code == 200 and pieces.json()["tokens"][0]["piece"]


# --------------------------------------------------------------------------- off the loop
@limits
def test_loads_yielding_parses_as_json_loads():
    """The body parser that hands the GIL to the loop reads JSON exactly as json.loads."""
    from refserver.http.offload import loads_yielding

    def reject(name):
        raise ValueError(name)
    text = json.dumps({"a": [1, 2.5, -3e-7, {"b": None, "c": True}], "d": "x\u00e9", "e": {}, "f": []}) + " "
    assert loads_yielding(text, reject) == json.loads(text)
    assert loads_yielding('{"k": 1, "k": 2}', reject) == {"k": 2}  # the last duplicate wins
    assert loads_yielding("1e999", reject) == float("inf")  # refused later, by the schemas
    with pytest.raises(ValueError):
        loads_yielding('{"x": NaN}', reject)


@limits
def test_long_texts_tokenize_as_short_ones():
    """Texts past the length where the tokenizer releases the GIL get the same ids."""
    from refserver.model_dir import resolve_model_dir
    from refserver.tokenizer import _LONG_TEXT, TextTokenizer

    tok = TextTokenizer(resolve_model_dir(None, None).path)
    text = "Once upon a time, <|im_start|> a fox said: \"hi\"\n" * (2 * _LONG_TEXT // 40)
    assert len(text) > _LONG_TEXT
    assert tok.encode(text) == tok.tok.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, parse_special=False)[:40] == tok.encode(text[:400], parse_special=False)[:40]
