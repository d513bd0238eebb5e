"""A lean streaming client for `/completion` (SSE), and N of them at once.

Lean on purpose: the client shares the CPU with the server, so it reads the socket in
large pieces and parses each `data:` line with `json.loads`, and does nothing else per token.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

perf = time.perf_counter


@dataclass
class StreamResult:
    t_start: float
    t_first: float = 0.0  # first event carrying a token
    t_end: float = 0.0
    tokens: list[int] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ttft_ms(self) -> float:
        return (self.t_first - self.t_start) * 1e3

    @property
    def n_predicted(self) -> int:
        return int(self.final.get("tokens_predicted", len(self.tokens)))

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first over the time after the first (client clock)."""
        n = self.n_predicted
        dt = self.t_end - self.t_first
        return (n - 1) / dt if n > 1 and dt > 0 else float("nan")


def completion_body(prompt, n_predict: int, **extra) -> dict:
    body = {"prompt": prompt, "n_predict": n_predict, "stream": True, "temperature": 0.0,
            "ignore_eos": True, "cache_prompt": True}
    body.update(extra)
    return body


class _ChunkedSSE:
    """Incremental decoder of an HTTP body (chunked, or plain) into SSE `data:` payloads."""

    def __init__(self, chunked: bool = True) -> None:
        self.chunked = chunked  # a response finished before its first flush has a Content-Length
        self.raw = b""  # undecoded chunked bytes
        self.body = b""  # decoded body not yet split into events
        self.ended = False

    def feed(self, data: bytes) -> list[bytes]:
        if not self.chunked:
            self.body += data
        else:
            self.raw += data
        while self.chunked and not self.ended:
            eol = self.raw.find(b"\r\n")
            if eol < 0:
                break
            size = int(self.raw[:eol].split(b";")[0], 16)
            if size == 0:
                self.ended = True
                break
            if len(self.raw) < eol + 2 + size + 2:
                break
            self.body += self.raw[eol + 2: eol + 2 + size]
            self.raw = self.raw[eol + 2 + size + 2:]
        events, _, self.body = self.body.rpartition(b"\n\n")
        return [line[6:] for line in events.split(b"\n") if line.startswith(b"data: ")]


def stream_completion(port: int, body: dict, timeout: float = 300.0, path: str = "/completion") -> StreamResult:
    """One streamed `/completion` over a raw socket: large `recv`s, chunked framing and
    SSE lines split by hand, one `json.loads` per event (http.client's line reader cost
    as much CPU per token as the server's whole IOLoop, on the same 2 cores).  With
    `path="/v1/completions"` (an OpenAI server; ask for `stream_options.include_usage`)
    the token count is the closing usage chunk's."""
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    res = StreamResult(t_start=perf())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(head + payload)
            data = b""
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    raise ConnectionError("the server closed the connection before answering")
                data += more
            header, _, data = data.partition(b"\r\n\r\n")
            status = int(header.split(b" ", 2)[1])
            if status != 200:
                while more:
                    more = sock.recv(65536)
                    data += more
                res.error = f"HTTP {status}: {data[:500]!r}"
                return res
            decoder = _ChunkedSSE(chunked=b"chunked" in header.lower())
            while not res.t_end:
                for line in decoder.feed(data):
                    if line == b"[DONE]":
                        break
                    event = json.loads(line)
                    if "error" in event:
                        res.error = json.dumps(event["error"])[:500]
                        break
                    if "choices" in event:  # OpenAI chunks: a usage chunk closes the stream
                        if event["choices"] and not res.t_first:
                            res.t_first = perf()
                        if event.get("usage"):
                            res.final = {"tokens_predicted": event["usage"]["completion_tokens"]}
                            res.t_end = perf()
                            break
                        continue
                    toks = event.get("tokens") or []
                    if toks and not res.t_first:
                        res.t_first = perf()
                    if event.get("stop"):
                        res.final = event
                        res.t_end = perf()
                        res.t_first = res.t_first or res.t_end
                        break
                    res.tokens.extend(toks)
                if res.error or res.t_end or decoder.ended:
                    break
                data = sock.recv(65536)
                if not data:
                    break
    except (OSError, ValueError, IndexError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    if not res.t_end:
        res.t_end = perf()
    return res


def concurrent_streams(port: int, bodies: list[dict], path: str = "/completion") -> tuple[list[StreamResult], float]:
    """All bodies streamed at once (one thread and connection each); returns the results
    and the aggregate decode rate: all tokens generated after each stream's first token
    over the time from the first first-token to the last end."""
    results: list[StreamResult | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = stream_completion(port, bodies[i], path=path)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r is not None]
    ok = [r for r in done if r.error is None]
    if not ok:
        return done, float("nan")
    t0 = min(r.t_first for r in ok)
    t1 = max(r.t_end for r in ok)
    n = sum(r.n_predicted - 1 for r in ok)
    return done, n / (t1 - t0) if t1 > t0 else float("nan")
