"""A longer fuzz campaign against a running refserver (or any llama-server compatible server).

    python -m refserver -m ../shared/models/stories260K/onnx-genai --port 8080 -np 4 -c 2048 -n 8 &
    python tools/fuzz_campaign.py --url http://127.0.0.1:8080 --minutes 2 [--pid PID] [--out bad.jsonl]

For N minutes, a few workers send random and mutated requests: bodies built from each
route's fields with plausible and hostile values, arbitrary JSON, valid bodies with
mutated bytes, wrong methods and paths, raw HTTP garbage, streams abandoned mid-queue or
mid-stream, oversized bodies, generating requests with 2-5 sampling fields at extreme
values (the combinations that once killed the engine thread), and ordinary requests.
Every answer is checked:

- no 5xx status (a 501 for a disabled endpoint or a 503 for a full queue, with their
  envelopes, are answers), and no 5xx error event inside a stream;
- every non-200 answer has `{"error": {"code", "message", "type"}}` with code == status;
- the connection is never dropped on a well-formed HTTP request;
- `/health` answers 200 throughout (polled every few seconds; it turns 503 if the engine
  thread dies);
- at the end every slot is idle within 5 s, and with --pid the server's thread count
  and RSS are compared with their values after a warm-up.

The summary goes to stdout; problems (with the request that caused them) to --out as
JSON lines.  Exit status 1 when any problem was found.  Needs only `requests`.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server import proc_status  # after the path: the repository root

GENERATING = ["/completion", "/completions", "/v1/completions", "/v1/chat/completions", "/chat/completions"]
POST_ROUTES = GENERATING + ["/tokenize", "/detokenize", "/apply-template", "/infill"]
EXTREME_FLOAT_FIELDS = ["temperature", "dynatemp_range", "dynatemp_exponent", "top_p", "min_p", "typical_p",
                        "top_n_sigma", "xtc_probability", "xtc_threshold", "mirostat_tau", "mirostat_eta",
                        "repeat_penalty", "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base"]
EXTREME_INT_FIELDS = ["top_k", "mirostat", "repeat_last_n", "dry_allowed_length", "dry_penalty_last_n", "n_probs",
                      "min_keep"]
EXTREME_FLOATS = [0.0, -0.0, 1e-320, 1e-38, 0.5, 1.0, 2.0, 600.0, 1e38, 3.4e38, 1e39, 1e308, -1.0, -600.0, -1e38,
                  -1e308]
EXTREME_INTS = [0, 1, 2, -1, -2, 100, 2**31, 10**9, -10**9, 2**63]
GET_ROUTES = ["/health", "/v1/health", "/models", "/v1/models", "/props", "/slots", "/metrics", "/"]
KIND = {"/completion": "native", "/completions": "native", "/v1/completions": "oai",
        "/v1/chat/completions": "chat", "/chat/completions": "chat", "/apply-template": "chat",
        "/tokenize": "tokenize", "/detokenize": "detokenize", "/infill": "infill"}
VALID = {"native": {"prompt": "Once upon a time", "n_predict": 4},
         "oai": {"prompt": "Once upon a time", "max_tokens": 4},
         "chat": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
         "tokenize": {"content": "Once upon a time"}, "detokenize": {"tokens": [1, 2, 3]},
         "infill": {"input_prefix": "def f(", "input_suffix": ")", "n_predict": 4}}
SAMPLING = ["temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
            "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau", "xtc_probability",
            "xtc_threshold", "dynatemp_range", "seed", "stop", "ignore_eos", "n_probs", "logit_bias", "samplers",
            "grammar", "json_schema", "id_slot", "cache_prompt", "t_max_predict_ms", "post_sampling_probs",
            "min_keep", "return_progress", "timings_per_token", "lora", "speculative.n_max", "n_keep",
            "dry_multiplier", "stream", "n_predict", "max_tokens"]
FIELDS = {
    "native": SAMPLING + ["prompt", "n_cmpl", "n", "return_tokens", "response_fields", "logprobs",
                          "multimodal_data"],
    "oai": SAMPLING + ["prompt", "n", "logprobs", "echo", "best_of", "suffix", "model", "user", "stream_options"],
    "chat": SAMPLING + ["messages", "n", "logprobs", "top_logprobs", "max_completion_tokens", "tools",
                        "tool_choice", "parallel_tool_calls", "response_format", "chat_template_kwargs",
                        "add_generation_prompt", "stream_options", "model"],
    "tokenize": ["content", "add_special", "parse_special", "with_pieces"],
    "detokenize": ["tokens"],
    "infill": SAMPLING + ["input_prefix", "input_suffix", "input_extra", "prompt"],
}
HOSTILE_TEXT = ["", "\x00", "\ud800", "\udfff\ud800", "<|im_start|>", "<s>", "</s>", "{{ 7*7 }}",
                "{% for x in range(10**9) %}{% endfor %}", "\u202e", "\uffff", "💥" * 50, "a" * 5000, "null",
                "\r\n\r\n", "<tool_call>", "\\", '"', "Once upon a time"]
SPLICE = [b"NaN", b"-Infinity", b"1e999", b"[" * 64, b"}" * 8, b"\x00", b"\xff", b'"\\ud800"', b"null",
          b"99999999999999999999999", b'"\\u0000"', b",", b":", b'"', b"\\", b"{" * 3000]
GARBAGE = [b"GARBAGE\r\n\r\n", b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
           b"POST /completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
           b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
           b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
           b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\""]


# --------------------------------------------------------------------------- generators
class Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    def text(self) -> str:
        r = self.r
        if r.random() < 0.3:
            return r.choice(HOSTILE_TEXT)
        alphabet = "abc xyz\n\t\"\\{}[]<>|é中😀\u0000\u200b"
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, 24)))

    def number(self):
        r = self.r
        return r.choice([r.randint(-3, 8), r.randint(-2**31, 2**31), r.choice([2**63, -2**63 - 1, 2**64, 10**40]),
                         r.uniform(-2, 2), r.choice([0.0, -0.0, 1e-320, 1e308, -1e308])])

    def leaf(self):
        r = self.r
        return r.choice([None, True, False, self.number(), self.number(), self.text(), self.text()])

    def any(self, depth: int = 0):
        r = self.r
        roll = r.random()
        if depth > 3 or roll < 0.6:
            return self.leaf()
        if roll < 0.8:
            return [self.any(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.text(): self.any(depth + 1) for _ in range(r.randint(0, 4))}

    def prompt(self):
        r = self.r
        return r.choice([self.text(), [r.randint(0, 300) for _ in range(r.randint(0, 6))],
                         [self.text(), r.randint(0, 300)], {"prompt_string": self.text()},
                         [[r.randint(0, 300)], self.text()], self.any()])

    def messages(self):
        r = self.r
        if r.random() < 0.15:
            return self.any()
        out = []
        for _ in range(r.randint(0, 3)):
            m = {"role": r.choice(["system", "user", "assistant", "tool", "developer", self.text()]),
                 "content": r.choice([self.text(), None, [{"type": "text", "text": self.text()}], self.any()])}
            if r.random() < 0.2:
                m["tool_calls"] = [{"id": self.text(), "type": "function",
                                    "function": {"name": self.text(), "arguments": r.choice([self.text(), "{}"])}}]
            if r.random() < 0.1:
                m["tool_call_id"] = self.text()
            out.append(m)
        return out

    def value(self, field: str):
        r = self.r
        if r.random() < 0.25:
            return self.any()
        if field in ("prompt",):
            return self.prompt()
        if field == "messages":
            return self.messages()
        if field in ("n_predict", "max_tokens", "max_completion_tokens"):
            return r.randint(-1, 4)
        if field in ("stream", "ignore_eos", "cache_prompt", "return_tokens", "add_special", "parse_special",
                     "with_pieces", "post_sampling_probs", "return_progress", "timings_per_token",
                     "add_generation_prompt", "parallel_tool_calls", "echo"):
            return r.random() < 0.5
        if field == "tokens":
            return [r.choice([r.randint(0, 300), self.number()]) for _ in range(r.randint(0, 6))]
        if field == "stop":
            return r.choice([self.text(), [self.text() for _ in range(r.randint(0, 4))]])
        if field == "logit_bias":
            return r.choice([{str(r.randint(-5, 600)): self.number()}, [[r.randint(0, 600), r.choice([False, 1.5])]],
                             {self.text(): self.number()}])
        if field == "samplers":
            return r.choice([["top_k", "temperature"], "kpt", ["bogus"], self.text()])
        if field == "grammar":
            return r.choice(['root ::= "yes" | "no"', "root ::= root", "root ::= [", self.text()])
        if field in ("json_schema",):
            return r.choice([{"type": "object", "properties": {"a": {"type": "integer"}}}, {"$ref": "#/x"},
                             {"type": "array", "items": {"$ref": "#"}}, self.any()])
        if field == "response_format":
            return r.choice([{"type": "json_object"}, {"type": "text"},
                             {"type": "json_schema", "json_schema": {"schema": {"type": "string"}}}, self.any()])
        if field == "tools":
            return [{"type": "function", "function": {"name": r.choice(["get_weather", self.text()]),
                                                      "parameters": r.choice([{"type": "object"}, self.any()])}}]
        if field == "tool_choice":
            return r.choice(["auto", "none", "required", "bogus",
                             {"type": "function", "function": {"name": "get_weather"}}])
        if field in ("stream_options",):
            return {"include_usage": r.random() < 0.5}
        if field in ("input_prefix", "input_suffix", "content", "suffix", "model", "user"):
            return self.text()
        if field == "lora":
            return r.choice([[], [{"id": 0, "scale": 1.0}]])
        return self.number()

    def extreme_sampling(self, path: str) -> dict:
        """A valid body plus 2-5 sampling fields at huge, tiny, negative or zero values."""
        r = self.r
        body = dict(VALID[KIND[path]])
        for name in r.sample(EXTREME_FLOAT_FIELDS + EXTREME_INT_FIELDS + ["logit_bias"], r.randint(2, 5)):
            if name in EXTREME_FLOAT_FIELDS:
                body[name] = r.choice(EXTREME_FLOATS)
            elif name in EXTREME_INT_FIELDS:
                body[name] = r.choice(EXTREME_INTS)
            else:
                body[name] = {str(r.randint(0, 300)): r.choice(EXTREME_FLOATS) for _ in range(r.randint(1, 3))}
        if r.random() < 0.3:
            body["stream"] = True
        return body

    def structured(self, path: str) -> dict:
        r = self.r
        kind = KIND[path]
        body = {}
        for name in ("prompt", "messages", "content", "tokens", "input_prefix", "input_suffix"):
            if name in FIELDS[kind] and r.random() < 0.9 and name in json.dumps(VALID[kind]):
                body[name] = self.value(name)
        for name in r.sample(FIELDS[kind], k=min(len(FIELDS[kind]), r.randint(0, 6))):
            body[name] = self.value(name)
        if r.random() < 0.05:
            body[self.text()] = self.any()
        return body

    def mutated(self, path: str) -> bytes:
        r = self.r
        data = bytearray(json.dumps(VALID[KIND[path]]).encode())
        for _ in range(r.randint(1, 4)):
            op, pos = r.randint(0, 3), r.randint(0, len(data))
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = r.randint(0, 255)
            elif op == 1:
                data[pos:pos] = r.choice(SPLICE)
            elif op == 2:
                del data[pos:pos + r.randint(1, 8)]
            else:
                data = data[:pos]
        return bytes(data)


# --------------------------------------------------------------------------- campaign
class Campaign:
    def __init__(self, url: str, seconds: float, workers: int, seed: int, api_key: str | None, out: Path | None):
        self.url = url.rstrip("/")
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.deadline = time.monotonic() + seconds
        self.workers = workers
        self.seed = seed
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.out = out
        self.lock = threading.Lock()
        self.status = collections.Counter()
        self.actions = collections.Counter()
        self.routes = collections.Counter()
        self.error_types = collections.Counter()
        self.problems: list[dict] = []
        self.health_fail = 0
        self.health_checks = 0
        self.n = 0

    # ---------------------------------------------------------------- recording
    def problem(self, kind: str, **detail) -> None:
        with self.lock:
            self.problems.append({"kind": kind, **detail})

    def record(self, action: str, route: str, status) -> None:
        with self.lock:
            self.n += 1
            self.actions[action] += 1
            self.routes[route] += 1
            self.status[status] += 1

    def check(self, action: str, method: str, path: str, body, res: requests.Response) -> None:
        self.record(action, path, res.status_code)
        shown = body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else body
        if res.status_code >= 500 and not self.deliberate(res):
            self.problem("5xx", method=method, path=path, body=shown, status=res.status_code, reply=res.text[:500])
            return
        if res.status_code == 200:
            if res.headers.get("Content-Type", "").startswith("text/event-stream"):
                self.check_stream_text(method, path, shown, res.text)
            return
        if method in ("HEAD", "OPTIONS"):
            return
        try:
            doc = res.json()
            err = doc["error"]
            ok = (err["code"] == res.status_code and isinstance(err["message"], str) and err["message"]
                  and isinstance(err["type"], str))
        except (ValueError, KeyError, TypeError):
            ok, err = False, None
        if not ok:
            self.problem("no-envelope", method=method, path=path, body=shown, status=res.status_code,
                         reply=res.text[:500])
        else:
            with self.lock:
                self.error_types[f"{res.status_code} {err['type']}"] += 1

    @staticmethod
    def deliberate(res: requests.Response) -> bool:
        """A 501 (endpoint disabled: /metrics without --metrics) or a 503 (queue full) is
        an answer, not a failure, when it comes with its envelope."""
        if res.status_code not in (501, 503):
            return False
        try:
            return res.json()["error"]["type"] in ("not_supported_error", "unavailable_error")
        except (ValueError, KeyError, TypeError):
            return False

    def check_stream_text(self, method, path, shown, text: str) -> None:
        for line in text.splitlines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            try:
                event = json.loads(line[5:])
            except ValueError:
                self.problem("bad-sse-json", method=method, path=path, body=shown, line=line[:300])
                return
            if isinstance(event, dict) and "error" in event:
                code = event["error"].get("code", 500) if isinstance(event["error"], dict) else 500
                if code >= 500 and "shutting down" not in str(event):
                    self.problem("5xx-event", method=method, path=path, body=shown, event=event)

    # ---------------------------------------------------------------- actions
    def post(self, action: str, path: str, body: bytes, timeout: float = 60) -> None:
        try:
            res = requests.post(f"{self.url}{path}", data=body, timeout=timeout,
                                headers={**self.headers, "Content-Type": "application/json"})
        except requests.RequestException as exc:
            self.record(action, path, "conn-error")
            self.problem("connection", method="POST", path=path, body=body[:300].decode("utf-8", "replace"),
                         error=repr(exc))
            return
        self.check(action, "POST", path, body, res)

    def act(self, g: Gen) -> None:
        r = g.r
        roll = r.random()
        path = r.choice(POST_ROUTES)
        if roll < 0.45:
            body = json.dumps(g.structured(path)).encode("utf-8", "surrogatepass")
            self.post("structured", path, body)
        elif roll < 0.60:
            self.post("mutated", path, g.mutated(path))
        elif roll < 0.67:
            self.post("any-json", path, json.dumps(g.any()).encode("utf-8", "surrogatepass"))
        elif roll < 0.75:
            self.wrong_method_or_path(g)
        elif roll < 0.83:
            self.abandon(g)
        elif roll < 0.86:
            self.garbage(g)
        elif roll < 0.865:
            self.oversized(g)
        elif roll < 0.93 and path in GENERATING:
            self.post("extreme-sampling", path, json.dumps(g.extreme_sampling(path)).encode())
        else:
            body = dict(VALID[KIND[path]])
            if r.random() < 0.5 and path in GENERATING:
                body["stream"] = True
            self.post("valid", path, json.dumps(body).encode())

    def wrong_method_or_path(self, g: Gen) -> None:
        r = g.r
        method = r.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"])
        path = r.choice(POST_ROUTES + GET_ROUTES + ["/nope", "/v1", "/v1/chat", "//completion",
                                                    "/completion/x", "/%00", "/..%2f..%2f", "/" + "z" * 3000])
        if method == "POST" and path in POST_ROUTES:
            path += "/extra"
        try:
            res = requests.request(method, f"{self.url}{path}", timeout=30, headers=self.headers,
                                   data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        except requests.RequestException as exc:
            self.record("method/path", path[:40], "conn-error")
            self.problem("connection", method=method, path=path[:200], error=repr(exc))
            return
        self.check("method/path", method, path[:40], b"", res)

    def abandon(self, g: Gen) -> None:
        r = g.r
        path = r.choice(GENERATING)
        body = dict(VALID[KIND[path]])
        body.update({"stream": True, "ignore_eos": True, "n_predict": 200, "max_tokens": 200})
        payload = json.dumps(body).encode()
        if r.random() < 0.5:  # raw socket, dropped after a while (queued, pre-filling or streaming)
            try:
                s = socket.create_connection((self.host, self.port), timeout=10)
                auth = b"".join(f"{k}: {v}\r\n".encode() for k, v in self.headers.items())
                s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), auth, len(payload), payload))
                time.sleep(r.uniform(0, 0.5))
                s.close()
                self.record("abandon-raw", path, "dropped")
            except OSError as exc:
                self.record("abandon-raw", path, "conn-error")
                self.problem("connection", method="POST", path=path, error=repr(exc))
            return
        try:
            res = requests.post(f"{self.url}{path}", data=payload, stream=True, timeout=30,
                                headers={**self.headers, "Content-Type": "application/json"})
            if res.status_code != 200:
                self.check("abandon-stream", "POST", path, payload, res)
                return
            for i, _ in enumerate(res.iter_lines()):
                if i >= r.randint(1, 6):
                    break
            res.close()
            self.record("abandon-stream", path, "dropped")
        except requests.RequestException as exc:
            self.record("abandon-stream", path, "conn-error")
            self.problem("connection", method="POST", path=path, error=repr(exc))

    def garbage(self, g: Gen) -> None:
        data = g.r.choice(GARBAGE)
        try:
            s = socket.create_connection((self.host, self.port), timeout=3)
            s.sendall(data)
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except TimeoutError:
                pass
            s.close()
        except OSError:
            reply = b""
        status = "closed"
        if reply.startswith(b"HTTP/1."):
            status = int(reply.split(b" ", 2)[1])
            if status >= 500:
                self.problem("5xx", method="RAW", path="-", body=data[:200].decode("latin-1"), status=status)
        self.record("raw-garbage", "-", status)

    def oversized(self, g: Gen) -> None:
        path = g.r.choice(POST_ROUTES)
        body = b'{"prompt": "' + b"a" * (17 * 1024 * 1024) + b'"}'
        try:
            res = requests.post(f"{self.url}{path}", data=body, timeout=120,
                                headers={**self.headers, "Content-Type": "application/json"})
        except requests.RequestException as exc:
            self.record("oversized", path, "conn-error")
            self.problem("connection", method="POST", path=path, body="<17 MB>", error=repr(exc))
            return
        self.check("oversized", "POST", path, b"<17 MB>", res)
        if res.status_code != 413 and not (res.status_code == 404 and path == "/infill"):
            self.problem("oversized-not-413", path=path, status=res.status_code)

    # ---------------------------------------------------------------- loops
    def worker(self, k: int) -> None:
        g = Gen(random.Random(self.seed * 1000 + k))
        while time.monotonic() < self.deadline:
            try:
                self.act(g)
            except Exception as exc:  # noqa: BLE001 - a campaign bug must not hide server results
                self.problem("campaign-exception", worker=k, error=repr(exc))

    def health_loop(self) -> None:
        while time.monotonic() < self.deadline:
            self.health()
            time.sleep(2.0)

    def health(self) -> bool:
        with self.lock:
            self.health_checks += 1
        try:
            res = requests.get(f"{self.url}/health", timeout=10, headers=self.headers)
            ok = res.status_code == 200
        except requests.RequestException:
            ok = False
        if not ok:
            with self.lock:
                self.health_fail += 1
            self.problem("health", detail="/health was not 200")
        return ok

    def slots_idle(self, timeout: float = 5.0) -> bool | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                res = requests.get(f"{self.url}/slots", timeout=10, headers=self.headers)
            except requests.RequestException:
                return False
            if res.status_code != 200:
                return None  # --no-slots: not observable
            if not any(s.get("is_processing") for s in res.json()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fuzz a running server for N minutes; report 5xx, non-envelope "
                                            "errors, dropped connections, health failures, stuck slots")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--api-key", default=None)
    p.add_argument("--pid", type=int, default=None, help="server pid: compare threads and RSS (Linux)")
    p.add_argument("--out", type=Path, default=None, help="write problems as JSON lines here")
    a = p.parse_args(argv)

    c = Campaign(a.url, a.minutes * 60, a.workers, a.seed, a.api_key, a.out)
    if not c.health():
        print(f"{a.url}/health is not 200; is the server running?", file=sys.stderr)
        return 2
    before = proc_status(a.pid) if a.pid else None
    t0 = time.monotonic()
    threads = [threading.Thread(target=c.worker, args=(k,), daemon=True) for k in range(a.workers)]
    threads.append(threading.Thread(target=c.health_loop, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    idle = c.slots_idle()
    healthy = c.health()
    after = proc_status(a.pid) if a.pid else None
    if idle is False:
        c.problem("slots", detail="a slot was still processing 5 s after the campaign")

    print(f"fuzz campaign: {a.url}, {elapsed:.0f} s, {a.workers} workers, seed {a.seed}")
    print(f"  requests: {c.n} ({c.n / max(elapsed, 1e-9):.1f}/s)")
    print("  actions:  " + ", ".join(f"{k} {v}" for k, v in c.actions.most_common()))
    print("  statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(c.status.items(), key=lambda kv: str(kv[0]))))
    print("  errors:   " + ", ".join(f"{k} {v}" for k, v in c.error_types.most_common(8)))
    print(f"  health:   {c.health_checks - c.health_fail}/{c.health_checks} ok; after the campaign "
          f"{'200' if healthy else 'NOT 200'}")
    print(f"  slots:    {'all idle' if idle else 'not observable' if idle is None else 'STILL BUSY'} after 5 s")
    if before and after:
        print(f"  process:  threads {before['Threads']} -> {after['Threads']}, "
              f"RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB")
    kinds = collections.Counter(pr["kind"] for pr in c.problems)
    print(f"  problems: {len(c.problems)}" + (" (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"
                                              if kinds else ""))
    for pr in c.problems[:10]:
        print("    " + json.dumps(pr, ensure_ascii=True)[:400])
    if a.out:
        with a.out.open("w") as f:
            for pr in c.problems:
                f.write(json.dumps(pr, ensure_ascii=True) + "\n")
    return 1 if c.problems or not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
