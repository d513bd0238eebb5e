"""The harness itself (tests/utils.py): argv from the flag table, SSE parsing, stream
assembly, helpers.  No server needed."""

from __future__ import annotations

import pytest
import utils
from utils import (
    FLAGS,
    EventStream,
    ServerError,
    ServerPreset,
    ServerProcess,
    ServerResponse,
    SSEComment,
    assemble_chat_stream,
    error_of,
    flag_args,
    match_regex,
    parallel_function_calls,
)

pytestmark = [pytest.mark.feature("harness"), pytest.mark.profile("refserver")]


class FakeResponse:
    """Enough of requests.Response for EventStream: chunks arrive as given."""

    status_code = 200

    def __init__(self, chunks: list[bytes]):
        self.headers: dict = {}
        self.chunks = chunks
        self.closed = False

    def iter_content(self, chunk_size=None):
        yield from self.chunks

    def close(self):
        self.closed = True


def stream_of(chunks: list[bytes], comments: bool = False) -> EventStream:
    return EventStream(FakeResponse(chunks), timeout=5, comments=comments)


def test_preset_argv_from_table():
    argv = ServerPreset.chat().args()
    assert argv[1:3] == ["-m", "refserver"] or argv[0] == utils.TARGET.server_bin
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--ctx-size"] == "1024" and pairs["--parallel"] == "2" and pairs["--batch-size"] == "32"
    assert pairs["--alias"] == "refserver-chat" and pairs["--seed"] == "42"
    assert "--jinja" in argv and "--slots" in argv and "--metrics" not in argv


@pytest.mark.parametrize("kind,value,expected", [
    ("toggle", None, []), ("toggle", True, ["--slots"]), ("toggle", False, ["--no-slots"]),
    ("switch", False, []), ("switch", True, ["--x"]),
    ("value", None, []), ("value", 0, ["--x", "0"]), ("value", ["a", "b"], ["--x", "a", "--x", "b"]),
])
def test_flag_kinds(kind, value, expected):
    flag = utils.Flag("x", ("--slots", "--no-slots") if kind == "toggle" else "--x", kind)
    assert flag_args(flag, value) == expected


def test_every_flag_attribute_exists():
    for f in FLAGS:
        assert hasattr(ServerProcess, f.attr), f.attr
    with pytest.raises(AttributeError):
        ServerProcess(no_such_flag=1)


def test_refserver_only_flags_skip_other_binaries(monkeypatch):
    monkeypatch.setattr(utils.TARGET, "server_bin", "/bin/false")
    monkeypatch.setattr(utils.TARGET, "server_url", None)
    server = ServerPreset.one_slot()
    server.keepalive = 1
    assert server.refserver_only_flags_set() == ["keepalive"]
    with pytest.raises(pytest.skip.Exception):
        server.start()


def test_start_fails_fast_with_stderr(monkeypatch):
    monkeypatch.setattr(utils.TARGET, "server_url", None)
    monkeypatch.setattr(utils.TARGET, "server_bin", None)
    server = ServerProcess(model="/nonexistent/model/dir")
    with pytest.raises(RuntimeError, match="exited with code"):
        server.start(timeout=30)
    assert not server.is_running()


def test_sse_parsing_across_chunk_boundaries():
    s = stream_of([b'data: {"a"', b': 1}\n', b"\n: keep", b"alive\n\ndata: {\"b\": 2}\r\n\r\n", b"data: [DONE]\n\n"])
    assert list(s) == [{"a": 1}, {"b": 2}]
    assert s.done
    assert [c.text for c in s.comments] == ["keepalive"]
    assert [k for k, _, _ in s.items] == ["data", "comment", "data", "done"]


def test_sse_comments_yielded_when_asked():
    items = list(stream_of([b": ping\n\n", b'data: {"x": 1}\n\n'], comments=True))
    assert isinstance(items[0], SSEComment) and items[1] == {"x": 1}


def test_sse_utf8_split_inside_character():
    data = 'data: {"c": "🦙"}\n\n'.encode()
    s = stream_of([data[:13], data[13:]])
    assert list(s) == [{"c": "🦙"}]
    assert not s.done


def _chunk(delta, finish=None, cid="chatcmpl-1", index=0):
    return {"id": cid, "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def _sse(*events, done=True) -> list[bytes]:
    import json
    out = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    return out + ([b"data: [DONE]\n\n"] if done else [])


def test_assemble_chat_stream():
    chunks = _sse(_chunk({"role": "assistant", "content": None}), _chunk({"content": "Hel"}),
                  _chunk({"content": "lo"}), _chunk({}, "stop"),
                  {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    body = assemble_chat_stream(stream_of(chunks))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 5


def test_assemble_tool_calls():
    first = {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}]}
    more = {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Paris\"}"}}]}
    body = assemble_chat_stream(stream_of(_sse(_chunk({"role": "assistant", "content": None}), _chunk(first),
                                               _chunk(more), _chunk({}, "tool_calls"))))
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}


@pytest.mark.parametrize("chunks,message", [
    (_sse(_chunk({"content": "x"})), "role"),
    (_sse(_chunk({"role": "assistant"}), _chunk({"role": "assistant", "content": "x"})), "role repeated"),
    (_sse(_chunk({"role": "assistant"}), _chunk({"content": ""})), "empty content"),
    (_sse(_chunk({"role": "assistant"}), _chunk({"content": "x"}, cid="other")), "several ids"),
    (_sse(_chunk({"role": "assistant"}), done=False), "DONE"),
    (_sse(_chunk({"role": "assistant"}), _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
     "without id"),
    (_sse(_chunk({"role": "assistant"}), {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": []}),
     "usage"),
], ids=["no_role", "role_twice", "empty_content", "two_ids", "no_done", "tool_without_id", "empty_no_usage"])
def test_assemble_rejects_broken_streams(chunks, message):
    with pytest.raises(AssertionError, match=message):
        assemble_chat_stream(stream_of(chunks))


def test_parallel_function_calls_order_and_errors():
    import time

    def slow(x):
        time.sleep(0.05 * (3 - x))
        return x
    assert parallel_function_calls([(slow, (i,)) for i in range(3)]) == [0, 1, 2]

    def boom():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        parallel_function_calls([(slow, (0,)), (boom, ())])


def test_match_regex_flags():
    assert match_regex("paris", "The capital\nis PARIS.")
    assert match_regex("capital.is", "capital\nis")
    assert not match_regex("^rome$", "Paris")


def test_error_of_checks_envelope():
    ok = ServerResponse(400, {}, {"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}})
    assert error_of(ok)["type"] == "invalid_request_error"
    for body in ({"error": "flat string"}, {"error": {"code": 500, "message": "x", "type": "t"}}, "<html>"):
        with pytest.raises(AssertionError):
            error_of(ServerResponse(400, {}, body))
    assert str(ServerError(503, {"e": 1})).startswith("HTTP 503")


def test_renamed_flag_follows_the_binary_help():
    """Another binary gets a flag's newer llama-server name when its --help lists it."""
    flag = next(f for f in utils.FLAGS if f.attr == "draft_max")
    assert utils.flag_args(flag, 8) == ["--draft-max", "8"]
    old_help = "--draft, --draft-n, --draft-max N   number of tokens to draft\n"
    new_help = old_help + "--spec-draft-n-max N   number of tokens to draft for speculative decoding\n"
    assert utils.flag_args(flag, 8, old_help) == ["--draft-max", "8"]
    assert utils.flag_args(flag, 8, new_help) == ["--spec-draft-n-max", "8"]


def test_if_listed_flag_is_left_out_for_a_binary_without_it():
    """`--kv-unified` reaches another binary only when its --help lists it (older llama-servers)."""
    flag = next(f for f in utils.FLAGS if f.attr == "kv_unified")
    assert utils.flag_args(flag, True) == ["--kv-unified"]
    assert utils.flag_args(flag, True, "-np, --parallel N   number of slots\n") == []
    listed = "-kvu, --kv-unified, -no-kvu, --no-kv-unified   use single unified KV buffer\n"
    assert utils.flag_args(flag, False, listed) == ["--no-kv-unified"]


def test_metric_ignores_the_namespace():
    m = utils.parse_prometheus("llamacpp:prompt_tokens_total 24\nrefserver:n_decode_total 3\n")
    assert utils.metric(m, "prompt_tokens_total") == 24
    assert utils.metric(m, "n_decode_total") == 3
    assert utils.metric(m, "missing_total", 0) == 0
