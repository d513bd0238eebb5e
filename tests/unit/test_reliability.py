"""Reliability (issue 8): what test_security.py does not already cover.

- API keys: repeated --api-key, comma lists, --api-key-file; every protected route and
  alias; bad keys in both headers; constant-time comparison.
- CORS: --cors-origins with several origins, plain (non-preflight) responses.
- Limits: chunked oversized bodies, prompt and n_predict bounds, n <= slots, a full queue
  on every generating route, t_max_predict_ms.
- Hostile input on every POST route, wrong types in every schema field, wrong methods
  and paths, raw HTTP garbage.
- Disconnect storms: 40 streams on 4 slots, half abandoned (mid-queue and mid-stream).
- SIGTERM / SIGINT: streams end, /health 503 while draining, exit 0 within the grace.
- Logging: one line per request, X-Request-Id echoed, no prompt text without --verbose.

Servers run the small stories260K model when ../shared is present (else the embedded
chat model) so that the whole file stays well under a minute on two cores.
"""

from __future__ import annotations

import inspect
import json
import random
import re
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from utils import (
    TARGET,
    ServerError,
    ServerPreset,
    ServerProcess,
    client_error_status_ok,
    deferred_requests,
    error_of,
    response_error,
    small_model,
    wait_until,
)

security = pytest.mark.feature("security")
limits = pytest.mark.feature("limits")
cancellation = pytest.mark.feature("cancellation")
pytestmark = pytest.mark.profile("refserver")  # refserver's flags; llama.cpp's own marked below

KEYS = ["key-one", "key-two", "key-three", "key-from-file"]


class ExtraArgsServer(ServerProcess):
    """A ServerProcess with extra argv (flags the harness has no attribute for)."""

    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return super().args() + list(self.extra)


def small_server(cls=ServerProcess, **attrs) -> ServerProcess:
    """stories260K (fast) when ../shared has it, else the embedded chat model."""
    base = {"model": small_model(), "n_ctx": 1024, "n_slots": 4, "n_batch": 64, "n_predict": 4, "seed": 42,
            "temperature": 0.8}
    base.update(attrs)
    return cls(**base)


def raw_request(server, method, path, headers=None, data=None, body=None, timeout=60):
    """A request without the harness's automatic Bearer header."""
    kw = {"headers": headers or {}, "timeout": timeout}
    if body is not None:
        kw["data"] = body
    elif data is not None:
        kw["json"] = data
    return requests.request(method, f"{server.url}{path}", **kw)


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def server_log(server: ServerProcess) -> str:
    text = ""
    for f in (server._stdout_file, server._stderr_file):
        if f is not None:
            f.seek(0)
            text += f.read().decode("utf-8", "replace")
    return text


# =========================================================================== API keys
@pytest.fixture(scope="module")
def keyed(server_pool):
    def make():
        key_file = Path(tempfile.mkdtemp()) / "keys.txt"
        # comment lines are llama.cpp's key-file format; trimming blanks is refserver's own
        pad = "  " if TARGET.runs_refserver else ""
        key_file.write_text(f"# a comment line\n\n{pad}key-from-file{pad}\n")
        server = small_server(ExtraArgsServer)
        server.api_key = ["key-one", "key-two,key-three"]
        server.extra = ("--api-key-file", str(key_file))
        return server
    return server_pool("keyed", make)


@security
@pytest.mark.needs_flags
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.profile("llamacpp")
def test_every_configured_key_works_in_both_headers(keyed, key):
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-Api-Key": key}, {"authorization": f"bearer {key}"}):
        res = raw_request(keyed, "POST", "/tokenize", headers=headers, data={"content": "hi"})
        assert res.status_code == 200, (headers, res.text)


PROTECTED_EXTRA = [
    ("POST", "/completions", {"prompt": "Hi", "n_predict": 1}),
    ("POST", "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    ("POST", "/completion", {"prompt": "Hi", "n_predict": 1, "stream": True}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True}),
    ("GET", "/metrics", None),
    ("POST", "/props", {}),
]


@security
@pytest.mark.needs_flags
@pytest.mark.parametrize("method,path,data", PROTECTED_EXTRA, ids=[f"{m} {p}" for m, p, _ in PROTECTED_EXTRA])
@pytest.mark.profile("llamacpp")  # llama.cpp's routes and aliases, its authentication_error type
def test_aliases_and_streams_need_a_key(keyed, method, path, data):
    res = raw_request(keyed, method, path, data=data)
    assert res.status_code == 401, res.text
    err = response_error(res)
    assert err["type"] == "authentication_error"
    if TARGET.runs_refserver:  # refserver's own request ids
        assert res.headers.get("X-Request-Id")


@security
@pytest.mark.needs_flags
@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer bad", "X-Api-Key": "bad"},
    {"Authorization": "Bearer key-one-", "X-Api-Key": "key-on"},
    {"Authorization": "Bearer key-one,key-two", "X-Api-Key": "key-one,key-two"},
    {"Authorization": "Bearer " + "k" * 10000, "X-Api-Key": "\u00e9\u00e9"},
    {"Authorization": "Bearer  ", "X-Api-Key": ""},
], ids=["both-bad", "near-miss", "list-as-key", "huge-and-latin1", "blank"])
@pytest.mark.profile("llamacpp")
def test_bad_keys_in_both_headers_are_401(keyed, headers):
    body = json.dumps({"prompt": "Hi", "n_predict": 1}).encode()
    # requests refuses non-latin-1 header values as str; send bytes
    hdrs = {k: v.encode("latin-1") for k, v in headers.items()}
    res = raw_request(keyed, "POST", "/completion", headers=hdrs, body=body)
    if res.status_code in (400, 431) and not TARGET.runs_refserver and len(headers["Authorization"]) > 8192:
        # an HTTP layer may refuse a 10 kB header line before any key check
        assert keyed.get("/health").status_code == 200
        return
    assert res.status_code == 401, res.text
    assert response_error(res)["type"] == "authentication_error"
    assert keyed.get("/health").status_code == 200


@security
def test_keys_are_compared_in_constant_time():
    from refserver.http import base

    source = inspect.getsource(base.BaseHandler._check_api_key)
    assert "hmac.compare_digest" in source
    assert not re.search(r"(key|given)\s*(==|!=|\bin\b)\s*", source.replace("compare_digest", "")), source


@security
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")  # --api-key-file is llama-server's flag
def test_unknown_key_file_is_a_start_error(tmp_path):
    server = small_server(ExtraArgsServer)
    server.extra = ("--api-key-file", str(tmp_path / "missing.txt"))
    with pytest.raises(RuntimeError, match="exited with code [1-9]"):  # refserver: 2, llama-server: 1
        server.start(timeout=30)


# =========================================================================== CORS
@security
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_cors_origins_list(server_pool):
    server = server_pool("cors2", lambda: small_server(cors_origins="http://a.example, http://b.example"))
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}
    for origin in ("http://a.example", "http://b.example"):
        res = raw_request(server, "OPTIONS", "/v1/chat/completions", headers={**pre, "Origin": origin})
        assert res.headers.get("Access-Control-Allow-Origin") == origin
        methods = {m.strip() for m in (res.headers.get("Access-Control-Allow-Methods") or "").split(",")}
        assert {"GET", "POST"} <= methods
        res = raw_request(server, "POST", "/tokenize", headers={"Origin": origin}, data={"content": "x"})
        assert res.headers.get("Access-Control-Allow-Origin") == origin
    for origin in ("http://c.example", "http://a.example.evil", "null"):
        res = raw_request(server, "POST", "/tokenize", headers={"Origin": origin}, data={"content": "x"})
        assert res.status_code == 200
        assert "Access-Control-Allow-Origin" not in res.headers
        res = raw_request(server, "OPTIONS", "/tokenize", headers={**pre, "Origin": origin})
        assert res.headers.get("Access-Control-Allow-Origin") in (None, "")


@security
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_cors_on_errors(keyed):
    """Browsers must be able to read a 401 / 404 (else they show an opaque CORS failure)."""
    origin = {"Origin": "http://example.com"}
    for method, path in (("POST", "/completion"), ("GET", "/nope")):
        res = raw_request(keyed, method, path, headers=origin, data={})
        assert res.status_code in (401, 404)
        assert res.headers.get("Access-Control-Allow-Origin") == "http://example.com"


# =========================================================================== limits
@pytest.fixture(scope="module")
def limited(server_pool):
    return server_pool("limited", lambda: small_server(max_body_mb=1))


@limits
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_chunked_oversized_body_is_413(limited):
    """No Content-Length: the limit is enforced while the body streams in."""
    def chunks():
        yield b'{"content": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'
    res = requests.post(f"{limited.url}/tokenize", data=chunks(), timeout=60,
                        headers={"Content-Type": "application/json"})
    assert res.status_code == 413
    assert response_error(res)["type"] == "invalid_request_error"
    assert "max-body-mb" in res.json()["error"]["message"]
    assert limited.ok("/tokenize", {"content": "small"})["tokens"]


@limits
@pytest.mark.needs_flags
@pytest.mark.parametrize("path", ["/completion", "/v1/completions", "/v1/chat/completions", "/apply-template",
                                  "/detokenize"])
def test_413_on_every_route(limited, path):
    res = limited.make_request("POST", path, raw=b'{"x": "' + b"b" * (2 * 1024 * 1024) + b'"}')
    assert res.status_code == 413
    error_of(res)


@limits
@pytest.mark.profile("llamacpp")
def test_prompt_longer_than_the_slot_is_400(limited):
    n_ctx = limited.props()["default_generation_settings"]["n_ctx"]
    prompt = " ".join(["once"] * (n_ctx + 50))
    for path, body in (("/completion", {"prompt": prompt, "n_predict": 1}),
                       ("/v1/completions", {"prompt": prompt, "max_tokens": 1}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]})):
        res = limited.post(path, body)
        assert res.status_code == 400, (path, res.body)
        err = error_of(res)
        assert err["type"] == "exceed_context_size_error"
        assert err["n_ctx"] == n_ctx and err["n_prompt_tokens"] > n_ctx
    with pytest.raises(ServerError) as info:
        limited.make_stream_request("POST", "/completion", {"prompt": prompt, "stream": True})
    assert info.value.status_code == 400


@limits
# 1.5 and true: llama.cpp coerces them to 1 (200); refusing them is refserver's own
@pytest.mark.parametrize("value", [-2, -10**6, pytest.param(1.5, marks=pytest.mark.extension), "4",
                                   pytest.param(True, marks=pytest.mark.extension), 10**30, 2**63])
@pytest.mark.profile("refserver")
def test_n_predict_bounds(limited, value):
    cap = limited.generation_cap()  # the slot's context: a request's own n_predict wins over -n
    n_ctx_train = limited.ok("/v1/models")["data"][0]["meta"]["n_ctx_train"]
    expected = min(1024, n_ctx_train)  # 4 slots sharing -c 1024 (unified KV), each up to all of it
    assert limited.external or cap == expected, f"/props reports n_ctx {cap}; the preset's slots have {expected}"
    for path, key in (("/completion", "n_predict"), ("/v1/completions", "max_tokens")):
        res = limited.post(path, {"prompt": "Once", key: value})
        if res.status_code == 200:  # a huge value runs into the slot's context
            assert isinstance(value, int) and not isinstance(value, bool) and value > 0
            usage = res.body.get("usage", {}).get("completion_tokens", res.body.get("tokens_predicted"))
            assert usage <= cap
        else:
            assert res.status_code == 400, res.body
            error_of(res)


@limits
@pytest.mark.profile("llamacpp")
def test_n_must_not_exceed_slots(limited):
    n_slots = limited.props()["total_slots"]
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    for path, body in (("/completion", {"prompt": "Hi", "n_cmpl": n_slots + 1}),
                       ("/v1/completions", {"prompt": "Hi", "n": n_slots + 1}),
                       ("/v1/chat/completions", {**chat, "n": n_slots + 1}),
                       ("/v1/chat/completions", {**chat, "n": 0}),
                       ("/v1/chat/completions", {**chat, "n": 10**20})):
        res = limited.post(path, body)
        assert res.status_code == 400, (path, body, res.body)
        error_of(res)
    res = limited.post("/v1/chat/completions", {**chat, "n": n_slots})
    assert res.status_code == 200 and len(res.body["choices"]) == n_slots


@limits
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_full_queue_is_503_on_every_route():
    """One slot, --max-queue 1: the slot busy and one request waiting, every generating
    route (streamed or not) answers 503 unavailable_error with Retry-After."""
    server = ServerPreset.one_slot()
    server.n_ctx, server.n_predict, server.max_queue = 2048, -1, 1
    server.context_shift, server.server_metrics = True, True
    server.start()
    first = server.hold_slot()  # busy until closed, however fast the machine
    waiting = socket.create_connection((server.host, server.port))
    body = json.dumps({"prompt": "x", "n_predict": 1}).encode()
    waiting.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        assert wait_until(lambda: deferred_requests(server) >= 1, 30), "the raw request was never queued"
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        for path, data in (("/completion", {"prompt": "Hi", "n_predict": 1}),
                           ("/completions", {"prompt": "Hi", "n_predict": 1}),
                           ("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
                           ("/v1/chat/completions", chat), ("/chat/completions", chat)):
            for stream in (False, True):
                res = server.post(path, {**data, "stream": stream}, timeout=30)
                assert res.status_code == 503, (path, stream, res.body)
                assert error_of(res)["type"] == "unavailable_error"
                assert int(res.headers["Retry-After"]) >= 1
        assert server.get("/health").status_code == 200  # /health is not the queue
        assert server.ok("/tokenize", {"content": "still serving"})
    finally:
        waiting.close()
        first.close()
    assert server.wait_slots_idle(3.0)
    assert server.ok("/completion", {"prompt": "Hi", "n_predict": 2})["tokens_predicted"] <= 2


@limits
@pytest.mark.needs_flags
def test_negative_max_queue_is_a_start_error():
    server = small_server(max_queue=-1)
    with pytest.raises(RuntimeError, match="exited with code 2"):
        server.start(timeout=30)


@limits
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_t_max_predict_ms_ends_generation():
    """A 2000-token generation cut by a 100 ms budget: stop_type "limit", far fewer tokens."""
    server = small_server(n_slots=1, n_ctx=2048, n_predict=None)
    server.start()
    body = {"prompt": "Once upon a time", "n_predict": 2000, "ignore_eos": True, "cache_prompt": False}
    full = server.ok("/completion", {**body, "n_predict": 300})
    assert full["tokens_predicted"] == 300
    res = server.ok("/completion", {**body, "t_max_predict_ms": 100})
    assert res["stop_type"] == "limit"
    assert 0 < res["tokens_predicted"] < 2000
    assert res["timings"]["predicted_ms"] < 100 + 1000
    stream = server.make_stream_request("POST", "/v1/completions", {
        "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "t_max_predict_ms": 1,
        "stream": True})
    events = stream.read_all()
    assert stream.done
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] < 2000


# =========================================================================== hostile input
@pytest.fixture(scope="module")
def hostile(server_pool):
    return server_pool("hostile", lambda: small_server())


POST_ROUTES = ["/completion", "/completions", "/v1/completions", "/v1/chat/completions", "/chat/completions",
               "/v1/responses",
               "/tokenize", "/detokenize", "/apply-template"]

HOSTILE_BODIES = {
    "empty": b"",
    "whitespace": b"  \n\t ",
    "broken": b'{"prompt": "x",',
    "trailing": b'{"prompt": "x"} {"prompt": "y"}',
    "nan": b'{"prompt": NaN, "content": NaN, "tokens": [NaN], "messages": NaN}',
    "neg_infinity": b'{"prompt": "x", "temperature": -Infinity, "tokens": [Infinity]}',
    "huge_int": b'{"prompt": "x", "n_predict": 1' + b"9" * 5000 + b', "tokens": [1' + b"0" * 5000 + b"]}",
    "huge_float": b'{"prompt": "x", "temperature": 1e999, "top_p": -1e-999}',
    "deep_array": b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    "deep_object": b'{"messages": ' + b'{"a":' * 20000 + b"1" + b"}" * 20000 + b"}",
    "lone_surrogate": b'{"prompt": "\\udc00\\ud800", "content": "\\ud800", '
                      b'"messages": [{"role": "user", "content": "\\udfff"}]}',
    "nul": b'{"prompt": "a\\u0000b", "content": "\\u0000", "tokens": [0], '
           b'"messages": [{"role": "user\\u0000", "content": "\\u0000"}]}',
    "raw_nul": b'{"prompt": "a\x00b"}',
    "not_utf8": b'{"prompt": "\xc3\x28\xff"}',
    "utf16": '{"prompt": "x"}'.encode("utf-16"),
    "bom": b'\xef\xbb\xbf{"prompt": "x", "content": "x"}',
    "dup_keys": b'{"prompt": 1, "prompt": "x", "content": 5, "content": "y"}',
    "wrong_top": b'[{"prompt": "x"}]',
    "string_top": b'"prompt"',
    "null_everything": b'{"prompt": null, "content": null, "tokens": null, "messages": null, "n_predict": null}',
    "wrong_types": b'{"prompt": {"a": 1}, "content": 5, "tokens": "abc", "messages": "hi", "stream": "yes"}',
    "big_key_count": b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(20000)) + b"}",
}


@limits
@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
@pytest.mark.profile("refserver")
def test_hostile_bodies_on_every_route(hostile, name):
    """Hostile bytes on every POST route the target offers: a 4xx (or 200) with the error
    envelope, never a 5xx, and the server keeps serving (CONTRACT §6)."""
    body = HOSTILE_BODIES[name]
    for path in hostile.offered(POST_ROUTES):
        res = hostile.make_request("POST", path, raw=body, timeout=60)
        assert client_error_status_ok(res.status_code), (path, res.status_code, res.body)
        if res.status_code != 200:
            error_of(res)
    assert hostile.get("/health").status_code == 200


def schema_fields() -> dict[str, list[str]]:
    from refserver.schemas.chat import ChatRequest
    from refserver.schemas.completion import CompletionRequest
    from refserver.schemas.oai_completion import OAICompletionRequest
    from refserver.schemas.tokenize import DetokenizeRequest, TokenizeRequest

    def names(cls):
        return sorted(f.alias or n for n, f in cls.model_fields.items())
    return {"/completion": names(CompletionRequest), "/v1/completions": names(OAICompletionRequest),
            "/v1/chat/completions": names(ChatRequest), "/tokenize": names(TokenizeRequest),
            "/detokenize": names(DetokenizeRequest), "/apply-template": names(ChatRequest)}


BASE_BODIES = {
    "/completion": {"prompt": "Once", "n_predict": 2},
    "/v1/completions": {"prompt": "Once", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/tokenize": {"content": "Once"},
    "/detokenize": {"tokens": [1, 2]},
    "/apply-template": {"messages": [{"role": "user", "content": "Hi"}]},
}
WRONG_VALUES = [[], {}, "str", 1.5, True, -1, 2**64, -(2**70), [None], {"a": [1, {"b": None}]},
                "\ud800", "x" * 100_000, [1] * 10_000]


@limits
@pytest.mark.parametrize("path", sorted(BASE_BODIES))
@pytest.mark.profile("refserver")
def test_wrong_types_in_every_field(hostile, path):
    """Each field of refserver's request schemas with a wrong type: a 4xx with the envelope."""
    failures = []
    for field in schema_fields()[path]:
        for value in WRONG_VALUES:
            body = dict(BASE_BODIES[path])
            body[field] = value
            if field in ("n_predict", "max_tokens", "max_completion_tokens") and value in (2**64,):
                continue  # a huge cap is legal; covered by test_n_predict_bounds
            raw = json.dumps(body, ensure_ascii=True)
            res = hostile.make_request("POST", path, raw=raw, timeout=60)
            if not client_error_status_ok(res.status_code):
                failures.append(f"{field}={str(value)[:40]!r}: {res.status_code} {str(res.body)[:200]}")
            elif res.status_code != 200:
                try:
                    error_of(res)
                except AssertionError as exc:
                    failures.append(f"{field}={str(value)[:40]!r}: {exc}")
    assert not failures, "\n".join(failures[:20])
    assert hostile.get("/health").status_code == 200


@limits
@pytest.mark.profile("llamacpp")
def test_wrong_methods_and_paths(hostile):
    for path in hostile.offered(POST_ROUTES):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            res = raw_request(hostile, method, path)
            if TARGET.runs_refserver:  # refserver: 405; llama-server routes by method and path: 404
                assert res.status_code == 405, (method, path, res.status_code)
                assert response_error(res)["type"] == "invalid_request_error"
            else:
                assert res.status_code in (404, 405), (method, path, res.status_code)
                response_error(res)
    for path in ("/health", "/v1/models", "/props", "/slots", "/metrics"):
        res = raw_request(hostile, "DELETE", path)
        assert res.status_code in (404, 405), (path, res.status_code)
        response_error(res)
    for path in ("/nope", "/v1", "/v2/chat/completions", "/completion/", "/%00", "/..%2f..%2fetc/passwd",
                 "/" + "x" * 20000, "/v1/chat/completions/extra", "//completion"):
        res = raw_request(hostile, "POST", path, data={"prompt": "x"})
        assert res.status_code == 404, (path[:50], res.status_code)
        err = response_error(res)
        assert err["type"] == "not_found_error"
        assert len(err["message"]) < 1000  # the path is not echoed in full
    assert hostile.get("/health").status_code == 200


def raw_http(server, data: bytes, timeout: float = 5.0) -> bytes:
    s = socket.create_connection((server.host, server.port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


@limits
@pytest.mark.profile("llamacpp")
def test_raw_http_garbage_does_not_hurt(hostile):
    """Malformed HTTP gets a 4xx (Tornado answers those itself, without the JSON envelope)
    or a closed connection; the server keeps serving."""
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 100_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"",  # truncated
    ]
    for data in garbage:
        reply = raw_http(hostile, data + b"", timeout=1.0)
        if reply:
            status = int(reply.split(b" ", 2)[1])
            assert 400 <= status < 500, reply[:200]
    assert hostile.get("/health").status_code == 200
    assert hostile.ok("/completion", {"prompt": "Once", "n_predict": 1})


@limits
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_request_id_header(hostile):
    res = raw_request(hostile, "GET", "/health", headers={"X-Request-Id": "client-id_1.2"})
    assert res.headers["X-Request-Id"] == "client-id_1.2"
    for bad in ("has space", "x" * 200, "<script>", "a/b"):
        res = raw_request(hostile, "GET", "/health", headers={"X-Request-Id": bad.encode("latin-1")})
        rid = res.headers["X-Request-Id"]
        assert rid != bad and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid)
    ids = {raw_request(hostile, "GET", "/nope").headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


# =========================================================================== disconnect storms
def _abandon_raw(server, body: dict, delay: float) -> None:
    """Send a streaming request on a raw socket, then drop it after `delay` seconds (the
    request is then queued or mid-stream)."""
    payload = json.dumps(body).encode()
    s = socket.create_connection((server.host, server.port), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    time.sleep(delay)
    s.close()


def _abandon_after(server, body: dict, n_events: int) -> None:
    stream = server.make_stream_request("POST", "/v1/chat/completions", body, timeout=60)
    for i, _ in enumerate(stream):
        if i + 1 >= n_events:
            break
    stream.close()


def _complete(server, path: str, body: dict) -> tuple[bool, list]:
    stream = server.make_stream_request("POST", path, body, timeout=60)
    events = stream.read_all()
    return stream.done, events


def _storm(server, rng: random.Random) -> list:
    story = {"max_tokens": 48, "ignore_eos": True, "stream": True, "temperature": 0}
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 48, "ignore_eos": True,
            "stream": True}
    jobs = []
    for i in range(40):
        if i % 2 == 0:
            path, body = (("/v1/completions", {**story, "prompt": f"Story {i}:"}) if i % 4 == 0
                          else ("/v1/chat/completions", chat))
            jobs.append(("complete", path, body))
        elif i % 4 == 1:
            jobs.append(("raw", None, {**story, "prompt": f"Abandoned {i}", "max_tokens": 200}))
        else:
            jobs.append(("after", None, {**chat, "max_tokens": 200}))
    rng.shuffle(jobs)
    results: list = [None] * len(jobs)

    def run(k):
        kind, path, body = jobs[k]
        try:
            if kind == "complete":
                results[k] = ("complete",) + _complete(server, path, body)
            elif kind == "raw":
                _abandon_raw(server, body, rng.uniform(0.0, 0.6))
                results[k] = ("abandoned",)
            else:
                _abandon_after(server, body, rng.randint(1, 4))
                results[k] = ("abandoned",)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[k] = ("error", repr(exc))

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return results


@cancellation
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_disconnect_storm():
    server = small_server(n_slots=4, n_ctx=2048, n_predict=256, jinja=True)
    server.start()
    pid = server.process.pid
    rng = random.Random(1234)
    snapshots = []
    for _round in range(2):
        results = _storm(server, rng)
        errors = [r for r in results if r is None or r[0] == "error"]
        assert not errors, errors[:5]
        complete = [r for r in results if r[0] == "complete"]
        assert len(complete) == 20
        for _, done, events in complete:
            assert done, "a completed stream ended without [DONE]"
            assert not any("error" in e for e in events), [e for e in events if "error" in e][:1]
            assert events[-1]["choices"][0]["finish_reason"] == "length" or any(
                c.get("finish_reason") for e in events for c in e.get("choices", []))
        assert server.wait_slots_idle(2.0), server.slots()
        time.sleep(0.3)
        snapshots.append(proc_status(pid))
    # the server still serves, normally
    assert server.ok("/completion", {"prompt": "Once", "n_predict": 3})["tokens_predicted"] <= 3
    assert server.get("/health").status_code == 200
    first, second = snapshots
    assert second["Threads"] <= first["Threads"] + 2, snapshots
    assert second["VmRSS"] - first["VmRSS"] < 64 * 1024, snapshots  # kB: a loose bound


# =========================================================================== shutdown
def _long_streams(server, n: int):
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}], "ignore_eos": True, "stream": True}
    streams = [server.make_stream_request("POST", "/v1/chat/completions", chat, timeout=30) for _ in range(n)]
    iters = [iter(s) for s in streams]
    for it in iters:
        next(it)  # the stream is running
    return streams, iters


@limits
@pytest.mark.needs_flags
def test_sigterm_ends_streams_with_an_error_event_and_exits_0():
    server = ServerPreset.chat()  # endless streams (no -n, context shift) outlive the grace
    server.n_ctx, server.n_slots, server.n_predict, server.shutdown_grace = 2048, 2, -1, 0.5
    server.context_shift = True
    server.start()
    session = requests.Session()
    assert session.get(f"{server.url}/health", timeout=5).status_code == 200  # a kept-alive connection
    streams, iters = _long_streams(server, 2)
    t0 = time.monotonic()
    server.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    try:
        res = session.get(f"{server.url}/health", timeout=5)
        assert res.status_code == 503
        assert response_error(res)["type"] == "unavailable_error"
    except requests.ConnectionError:
        pass  # the connection was already closed: not observable
    # still listening while it drains: a gateway's fresh health check reads 503
    assert requests.get(f"{server.url}/health", timeout=2).status_code == 503
    for stream, it in zip(streams, iters):
        rest = list(it)
        assert stream.done, "stream did not end with [DONE]"
        assert rest and "error" in rest[-1], rest[-1:] if rest else rest
        assert rest[-1]["error"]["type"] == "unavailable_error"
    code = server.process.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 0.5 + 4, elapsed
    assert "Traceback" not in server_log(server)


@limits
@pytest.mark.needs_flags
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_when_idle_exits_0_quickly(sig):
    server = small_server(shutdown_grace=5)
    server.start()
    t0 = time.monotonic()
    server.send_signal(sig)
    assert server.process.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3  # nothing in flight: the grace is not waited out


@limits
@pytest.mark.needs_flags
@pytest.mark.profile("llamacpp")
def test_sigterm_lets_short_streams_finish():
    server = small_server(shutdown_grace=5, n_predict=64)
    server.start()
    stream = server.make_stream_request("POST", "/v1/completions", {
        "prompt": "Once", "max_tokens": 40, "ignore_eos": True, "stream": True}, timeout=30)
    it = iter(stream)
    next(it)
    server.send_signal(signal.SIGTERM)
    rest = list(it)
    assert stream.done
    assert not any("error" in e for e in rest)
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
    assert server.process.wait(timeout=10) == 0


# =========================================================================== logging
MARKER = "ZqxMarker8271"
LOG_LINE = re.compile(r"request id=(?P<id>\S+) method=(?P<method>\S+) route=(?P<route>\S+) status=(?P<status>\d+) "
                      r"prompt_tokens=(?P<prompt>\d+) predicted_tokens=(?P<predicted>\d+) ms=(?P<ms>[\d.]+)")


def _traffic(server) -> dict[str, str]:
    """Requests carrying MARKER; returns {request id: expected status}."""
    ids = {}
    chat = {"messages": [{"role": "user", "content": f"Say {MARKER}"}], "max_tokens": 3}
    for k, (path, body, status) in enumerate([
            ("/completion", {"prompt": f"Once {MARKER}", "n_predict": 3}, 200),
            ("/v1/chat/completions", chat, 200),
            ("/v1/chat/completions", {**chat, "stream": True}, 200),
            ("/completion", {"prompt": MARKER, "n_predict": f"{MARKER}"}, 400),
            ("/tokenize", {"content": MARKER}, 200),
            ("/apply-template", chat, 200)]):
        rid = f"logtest-{k}"
        res = server.post(path, body, headers={"X-Request-Id": rid})
        assert res.status_code == status, (path, res.body)
        assert res.headers["X-Request-Id"] == rid
        ids[rid] = (path, status)
    return ids


@limits
@pytest.mark.needs_flags
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_one_structured_log_line_per_request_without_prompt_text(hostile):
    ids = _traffic(hostile)
    time.sleep(0.2)
    text = server_log(hostile)
    lines = {m["id"]: m for m in LOG_LINE.finditer(text)}
    for rid, (path, status) in ids.items():
        assert rid in lines, f"no log line for {rid}"
        m = lines[rid]
        assert m["route"] == path and int(m["status"]) == status and float(m["ms"]) >= 0
        assert text.count(f"id={rid} ") == 1
    assert int(lines["logtest-0"]["prompt"]) > 0 and int(lines["logtest-0"]["predicted"]) > 0
    assert int(lines["logtest-2"]["predicted"]) > 0  # streamed
    assert MARKER not in text, [ln for ln in text.splitlines() if MARKER in ln][:3]


@limits
@pytest.mark.needs_flags
@pytest.mark.extension
@pytest.mark.profile("refserver")
def test_verbose_logs_prompt_text():
    server = small_server(verbose=True)
    server.start()
    _traffic(server)
    time.sleep(0.2)
    assert MARKER in server_log(server)
