"""A multi-tenant chat workload whose requests share long prefixes, and a streaming client
that tells a clean failure from a lost request.

Each tenant has a long system prompt and few-shot examples; a session is one user's
multi-turn chat with a tenant, each turn resending the whole conversation so far (so turn
k+1 extends turn k's prompt).  Sessions run in closed loop on a few client threads.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

import requests

_SUBJECTS = ["the baker", "a small robot", "the old sailor", "a curious fox", "the librarian", "a young wizard",
             "the gardener", "a lost kitten", "the night guard", "a clever crow", "the painter", "a shy dragon"]
_ACTIONS = ["keeps a notebook of every visitor", "answers questions about the weather",
            "counts the apples in the market", "helps children find their way home",
            "writes short poems about the sea", "remembers the names of all the stars",
            "fixes broken clocks for free", "sings when the bus is late", "plants a tree every spring",
            "reads stories to the ducks", "collects shiny stones by the river", "bakes bread before sunrise"]
_QUESTIONS = ["What is the capital of France?", "Tell me a short story.", "What is 3 + 4?",
              "Who lives in the small house?", "What do you like to eat?", "Can you help me?",
              "What is the weather today?", "Tell me about the sea.", "What is 5 + 2?", "Say hello."]


def tenant_prefixes(n: int, seed: int, sentences: int = 24) -> list[list[dict]]:
    """n tenants' system prompt + few-shot turns, each a few hundred tokens."""
    rng = random.Random(seed)
    tenants = []
    for t in range(n):
        rules = " ".join(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_ACTIONS)}." for _ in range(sentences))
        system = f"You are assistant number {t} of tenant {rng.randrange(10**6)}. Facts you know: {rules}"
        shots = []
        for _ in range(2):
            shots += [{"role": "user", "content": rng.choice(_QUESTIONS)},
                      {"role": "assistant", "content": f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_ACTIONS)}."}]
        tenants.append([{"role": "system", "content": system}, *shots])
    return tenants


@dataclass
class Outcome:
    """One request as the client saw it.  kind: "ok" (finished, [DONE]), "error" (an HTTP
    error or an error event: a clean failure), "lost" (cut off or hung with no error)."""

    t_start: float
    kind: str = "lost"
    status: int = 0
    t_first: float = 0.0
    t_end: float = 0.0
    n_tokens: int = 0
    text: str = ""
    error: str = ""

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_start


def _read_events(resp: requests.Response, out: Outcome) -> None:
    done = False
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            done = True
            break
        event = json.loads(line[6:])
        if "error" in event:
            out.kind, out.error = "error", str(event["error"].get("message", event["error"]))[:200]
            continue
        for choice in event.get("choices", []):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                out.t_first = out.t_first or time.time()
                out.n_tokens += 1
                out.text += piece
        if event.get("usage"):
            out.n_tokens = event["usage"].get("completion_tokens", out.n_tokens)
    if out.kind != "error":  # a finished answer may be empty (end of generation at once)
        out.kind = "ok" if done else "lost"
        out.error = "" if done else "stream ended without [DONE] or an error event"


def stream_chat(url: str, body: dict, timeout: float = 30.0) -> Outcome:
    """POST a streamed chat completion; never raises."""
    out = Outcome(t_start=time.time())
    try:
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=(5, timeout)) as resp:
            out.status = resp.status_code
            if resp.status_code != 200:
                try:
                    message = resp.json()["error"]["message"]
                    out.kind, out.error = "error", f"HTTP {resp.status_code}: {message}"[:200]
                except (ValueError, KeyError, TypeError):
                    out.kind, out.error = "lost", f"HTTP {resp.status_code} without an error body"
            else:
                _read_events(resp, out)
    except requests.Timeout:
        out.kind, out.error = "lost", f"no data for {timeout:.0f}s (hung)"
    except (requests.RequestException, ValueError) as exc:
        # before any answer (refused by the gateway) the client knows it failed; a stream
        # cut off with no error event is lost
        out.kind, out.error = ("lost" if out.status else "error"), f"{type(exc).__name__}: {exc}"[:200]
    out.t_end = time.time()
    return out


@dataclass
class SessionLoad:
    """`clients` threads, each running multi-turn sessions against `url` until `stop`."""

    url: str
    model: str
    tenants: list[list[dict]]
    clients: int = 6
    turns: int = 4
    max_tokens: int = 16
    seed: int = 0
    timeout: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        while not self._stop.is_set():
            messages = list(rng.choice(self.tenants))
            for _ in range(self.turns):
                if self._stop.is_set():
                    return
                messages.append({"role": "user", "content": rng.choice(_QUESTIONS)})
                body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                        "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
                out = stream_chat(self.url, body, self.timeout)
                with self._lock:
                    self.outcomes.append(out)
                if out.kind != "ok":
                    break  # the user gives up on this session and starts another
                messages.append({"role": "assistant", "content": out.text})

    def run(self, seconds: float) -> list[Outcome]:
        threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(self.clients)]
        for t in threads:
            t.start()
        self._stop.wait(seconds)
        self._stop.set()
        for t in threads:
            t.join(self.timeout + 10)
        return self.outcomes

    def stop(self) -> None:
        self._stop.set()
