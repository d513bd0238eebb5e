"""`ServerConfig`: the server's settings (one field per flag, named as the rest of refserver
names the concept: `n_slots` for -np/--parallel, `n_ctx` for -c/--ctx-size, `temperature`
for --temp, `cache_ram_mib` for --cache-ram; the others after the flag's long form), and the two views the rest of the server gets of them: `engine_config()` for
the engine and `request_defaults()` for request validation.  `cli.py` fills it from the
command line; nothing else reads the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .engine.types import SpeculativeParams

if TYPE_CHECKING:  # imported when used: `refserver --help` needs neither numpy nor pydantic
    from .engine.engine import EngineConfig
    from .schemas.common import ServerDefaults

BACKENDS = {"onnx-cpu": "cpu", "onnx-cuda": "cuda", "onnx-dml": "dml"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    model: str | None = None
    model_draft: str | None = None
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    threads_draft: int = 1
    n_ctx: int = 0  # -c/--ctx-size; 0: the model's context length
    n_slots: int = 1  # -np/--parallel
    batch_size: int = 2048
    n_predict: int = -1
    temperature: float = 0.8  # --temp
    seed: int = -1
    slots: bool = True
    jinja: bool = True
    chat_template: str | None = None
    chat_template_file: str | None = None
    alias: str | None = None
    api_keys: list[str] = field(default_factory=list)
    metrics: bool = False
    verbose: bool = False
    threads: int = 0
    cache_ram_mib: int | None = None  # --cache-ram
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    backend: str = "onnx-cpu"
    strict: bool = False
    sse_keepalive: float = 5.0
    stream_interval_ms: float = 25.0
    prompt_cache_size: int | None = None
    max_body_mb: float = 16.0
    max_queue: int | None = None
    shutdown_grace: float = 3.0
    props: bool = False
    context_shift: bool = False

    @property
    def device(self) -> str:
        return BACKENDS[self.backend]

    def speculative(self) -> SpeculativeParams:
        """Draft settings of requests that give none (--draft-max/--draft-min/--draft-p-min)."""
        return SpeculativeParams(self.draft_max, self.draft_min, self.draft_p_min)

    def engine_config(self) -> EngineConfig:
        """What the engine runs with; optional flags left unset keep the engine's defaults."""
        from .engine.engine import EngineConfig

        optional = {"cache_ram_mib": self.cache_ram_mib, "prompt_cache_size": self.prompt_cache_size,
                    "max_queue": self.max_queue}
        return EngineConfig(n_slots=self.n_slots, n_ctx=self.n_ctx, n_batch=self.batch_size,
                            n_predict=self.n_predict, seed=self.seed, speculative=self.speculative(),
                            context_shift=self.context_shift,
                            **{k: v for k, v in optional.items() if v is not None})

    def request_defaults(self, has_draft: bool) -> ServerDefaults:
        """What request validation falls back to (the rest is the engine's: n_predict, seed)."""
        from .schemas.common import ServerDefaults

        return ServerDefaults(temperature=self.temperature, n_slots=self.n_slots, speculative=self.speculative(),
                              has_draft=has_draft)
