"""Shared helpers for the engine unit tests: the stories260K tokenizer + FakeBackend."""

from __future__ import annotations

import queue

import pytest
from utils import STORIES260K_DIR

from backends.fake import FakeBackend
from refserver.engine import Engine, EngineConfig
from refserver.engine.types import Failed, Finished, GenerationRequest, TokenOut

TOKENIZER_DIR = STORIES260K_DIR / "onnx-genai"
_tok = None


def tokenizer():
    global _tok
    if _tok is None:
        if not (TOKENIZER_DIR / "tokenizer.json").exists():
            pytest.skip("stories260K tokenizer not available")
        from refserver.tokenizer import TextTokenizer
        _tok = TextTokenizer(TOKENIZER_DIR)
    return _tok


class RecordingBackend(FakeBackend):
    """FakeBackend that remembers the steps of every forward call."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[list] = []

    def forward(self, steps):
        self.calls.append([(s.row, s.pos, len(s.tokens), s.all_logits) for s in steps])
        return super().forward(steps)


def make_engine(backend=None, draft=None, start=True, **cfg) -> Engine:
    cfg.setdefault("n_ctx", 1024)
    eng = Engine(backend or RecordingBackend(512, 2048), tokenizer(), EngineConfig(**cfg), draft=draft)
    if start:
        eng.start()
    return eng


class Collector:
    """A sink that queues events; `wait()` returns them all once the request ends."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.events: list = []

    def __call__(self, event):
        self.q.put(event)

    def wait(self, timeout: float = 20.0) -> list:
        while True:
            e = self.q.get(timeout=timeout)
            self.events.append(e)
            if isinstance(e, (Finished, Failed)):
                return self.events


def run(eng: Engine, req: GenerationRequest, timeout: float = 20.0) -> list:
    c = Collector()
    eng.submit(req, c)
    return c.wait(timeout)


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenOut)) + (
        events[-1].text if isinstance(events[-1], Finished) else "")


def tokens_of(events: list) -> list[int]:
    return [e.token for e in events if isinstance(e, TokenOut)]


def prompt(text: str = "Once upon a time there was a little girl") -> list[int]:
    return tokenizer().encode(text, add_special=True)
