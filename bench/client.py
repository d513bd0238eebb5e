"""A lean streaming client for `/completion` (SSE), and N of them at once.

Lean on purpose: the client shares the CPU with the server, so it parses each `data:`
line with `json.loads` and does nothing else per token.
"""

from __future__ import annotations

import http.client
import json
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


def stream_completion(port: int, body: dict, timeout: float = 300.0) -> StreamResult:
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    res = StreamResult(t_start=perf())
    try:
        conn.request("POST", "/completion", body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            res.error = f"HTTP {resp.status}: {resp.read()[:500]!r}"
            return res
        while True:
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                res.error = json.dumps(event["error"])[:500]
                break
            toks = event.get("tokens") or []
            if toks and not res.t_first:
                res.t_first = perf()
            if event.get("stop"):
                res.final = event
                res.t_end = perf()
                if not res.t_first:
                    res.t_first = res.t_end
                break
            res.tokens.extend(toks)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if not res.t_end:
        res.t_end = perf()
    return res


def concurrent_streams(port: int, bodies: list[dict]) -> tuple[list[StreamResult], float]:
    """All bodies streamed at once (one thread and connection each); returns the results
    and the aggregate decode rate: all tokens generated after each stream's first token
    over the time from the first first-token to the last end."""
    results: list[StreamResult | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = stream_completion(port, bodies[i])

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
