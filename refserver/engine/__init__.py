"""refserver's generation engine: slots, continuous batching, sampling, caches."""

from refserver.engine.engine import Engine, EngineConfig
from refserver.engine.slots import RequestHandle

__all__ = ["Engine", "EngineConfig", "RequestHandle"]
