"""`python -m bench.loop_latency [--model DIR] [--json FILE]`: how long one heavy request
stalls the server's IOLoop (issue 17; goal: worst /health latency < 0.1 s).

A poller thread sends GET /health back to back on a kept-alive connection while one heavy
request runs; the worst /health latency seen during that request is the stall an
unrelated client (a load balancer's probe, another stream) suffered.  The baseline row is
the poller alone.  Cases: a 200k-key `logit_bias` (3 MB body, refused by the bound after
parsing), the `logit_bias` of 1024 string keys, a 10 MB `/tokenize` (refused
by the bound), the largest accepted `/tokenize` (1 Mi characters), 50 kB with `with_pieces`,
a long prompt, and a list of 256 prompts.  Timings depend on the machine's load:
this reports them; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import threading
import time
from pathlib import Path

import requests

from .server import ROOT, Server

CHAT_MODEL = ROOT / "refserver" / "models" / "chat"


def _words(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    out, size = [], 0
    while size < n_chars:
        w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


def cases() -> list[tuple[str, str, dict]]:
    """(name, route, body) of each heavy request."""
    return [
        ("logit_bias 200k string keys (400)", "/completion",
         {"prompt": "Hi", "n_predict": 1, "logit_bias": {f"w{i}x": 1.0 for i in range(200_000)}}),
        ("logit_bias 1024 string keys", "/completion",
         {"prompt": "Hi", "n_predict": 1, "logit_bias": {_words(4, i): 0.5 for i in range(1024)}}),
        ("/tokenize 10 MB (400)", "/tokenize", {"content": _words(10_000_000)}),
        ("/tokenize 1 Mi chars", "/tokenize", {"content": _words(1 << 20)}),
        ("/tokenize with_pieces 50 kB", "/tokenize", {"content": _words(50_000), "with_pieces": True}),
        ("prompt of 1500 characters", "/completion", {"prompt": _words(1500), "n_predict": 4}),
        ("256 prompts", "/completion", {"prompt": [_words(200, i) for i in range(256)], "n_predict": 1}),
    ]


class Poller:
    """GET /health back to back; latencies recorded with their start times."""

    def __init__(self, url: str):
        self.url = url
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                session.get(self.url + "/health", timeout=300)
            except requests.RequestException:  # counted as the time it took to fail
                session = requests.Session()
            self.samples.append((t0, time.monotonic() - t0))
            time.sleep(0.002)

    def __enter__(self) -> Poller:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict:
        """Worst and median latency of the probes that overlapped [start, end], and their count."""
        hit = sorted(lat for t0, lat in self.samples if t0 <= end and t0 + lat >= start)
        return {"worst_health_s": hit[-1] if hit else 0.0, "median_health_s": hit[len(hit) // 2] if hit else 0.0,
                "probes": len(hit)}


def measure(url: str) -> list[dict]:
    rows = []
    with Poller(url) as poller:
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(1.0)
        rows.append({"case": "baseline (no other request)", "status": 200, "request_s": 1.0,
                     **poller.during(t0, time.monotonic())})
        for name, route, body in cases():
            data = json.dumps(body).encode()
            t0 = time.monotonic()
            res = requests.post(url + route, data=data, headers={"Content-Type": "application/json"}, timeout=600)
            t1 = time.monotonic()
            time.sleep(0.05)  # let the probe in flight at the end finish
            rows.append({"case": name, "status": res.status_code, "request_s": t1 - t0,
                         "body_mb": len(data) / 1e6, "response_mb": len(res.content) / 1e6,
                         **poller.during(t0, t1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(CHAT_MODEL), help="model directory (default: the embedded chat model)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    with Server(args.model, ["-c", "8192", "-np", "4", "--max-body-mb", "16"]) as server:
        rows = measure(server.url)
    print(f"{'case':36} {'status':>6} {'request s':>10} {'/health worst s':>16} {'median s':>9} {'probes':>7}")
    for r in rows:
        print(f"{r['case']:36} {r['status']:>6} {r['request_s']:>10.3f} {r['worst_health_s']:>16.3f} "
              f"{r['median_health_s']:>9.3f} {r['probes']:>7}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
