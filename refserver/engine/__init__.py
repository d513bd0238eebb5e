"""The engine: slots, continuous batching, sampling, prompt caches, speculative decoding.

`Engine`, `EngineConfig` and `RequestHandle` are imported lazily, so that importing the
plain data types (`refserver.engine.types`) from the HTTP layer or the chat libraries
pulls in neither numpy nor the engine itself.
"""

from __future__ import annotations

__all__ = ["Engine", "EngineConfig", "RequestHandle"]


def __getattr__(name: str):
    if name in ("Engine", "EngineConfig"):
        from refserver.engine import engine
        return getattr(engine, name)
    if name == "RequestHandle":
        from refserver.engine.slots import RequestHandle
        return RequestHandle
    raise AttributeError(f"module 'refserver.engine' has no attribute {name!r}")
