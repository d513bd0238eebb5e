"""`ServerConfig`: the server's settings (one field per flag, named after its long form), and the two views the rest of the server gets of them: `engine_config()` for
the engine and `request_defaults()` for request validation.  `cli.py` fills it from the
command line; nothing else reads the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .engine.types import SpeculativeParams

if TYPE_CHECKING:  # imported when used: `refserver --help` needs neither numpy nor pydantic
    from .engine.engine import EngineConfig
    from .schemas.common import ServerDefaults

BACKENDS = {"onnx-cpu": "cpu", "onnx-cuda": "cuda", "onnx-dml": "dml"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # comma-separated: one listener each
    port: int = 8080
    model: str | None = None
    model_draft: str | None = None
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    threads_draft: int = 1
    n_ctx: int = 0  # -c: total tokens of all slots (0: the model's context length)
    n_slots: int = 4  # -np
    kv_unified: bool = True  # False: each slot gets ctx_size / parallel (llama.cpp's --no-kv-unified)
    batch_size: int = 2048
    n_predict: int = -1
    temperature: float | None = None  # --temp; None: the model's genai_config.json search default, else 0.8
    seed: int = -1
    slots: bool = True
    jinja: bool = True
    chat_template: str | None = None
    chat_template_file: str | None = None
    alias: str | None = None  # the first of `aliases`
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    metrics: bool = False
    metrics_compat: tuple[str, ...] = ()  # extra metric name sets for routers: "vllm"
    verbose: bool = False
    threads: int = 0
    cache_ram_mib: int | None = None  # --cache-ram  # MiB
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    cors_methods: str = "GET, POST, DELETE, OPTIONS"
    cors_headers: str = "*"
    webui: bool = True
    sampling: dict = field(default_factory=dict)  # SamplingParams fields set by --top-k, --min-p, ...
    inert_flags: list[str] = field(default_factory=list)  # llama-server flags with no effect here
    backend: str = "onnx-cpu"
    strict: bool = False
    sse_keepalive: float = 5.0
    stream_interval_ms: float = 25.0
    prompt_cache_size: int | None = None
    max_body_mb: float = 16.0
    max_queue: int | None = None
    shutdown_grace: float = 3.0
    timeout: float = 30.0  # seconds a request body may take to arrive
    props: bool = False
    reasoning_format: str = "auto"  # none | deepseek | auto: split <think> off content
    reasoning: str = "auto"  # on | off | auto: the template's enable_thinking
    reasoning_budget: int = -1  # -1: unlimited; 0: thinking off; N: </think> forced after N tokens
    responses_store_size: int = 256
    context_shift: bool = False

    @property
    def device(self) -> str:
        return BACKENDS[self.backend]

    def speculative(self) -> SpeculativeParams:
        """Draft settings of requests that give none (--draft-max/--draft-min/--draft-p-min)."""
        return SpeculativeParams(self.draft_max, self.draft_min, self.draft_p_min)

    def engine_config(self, search: dict | None = None) -> EngineConfig:
        """What the engine runs with; optional flags left unset keep the engine's defaults.
        `search`: the model's genai_config.json search values (`max_length` is the context
        when `-c` is not given)."""
        from .engine.engine import EngineConfig

        optional = {"cache_ram_mib": self.cache_ram_mib, "prompt_cache_size": self.prompt_cache_size,
                    "max_queue": self.max_queue}
        n_ctx = self.n_ctx or (search or {}).get("max_length", 0)
        return EngineConfig(n_slots=self.n_slots, n_ctx=n_ctx, kv_unified=self.kv_unified,
                            n_batch=self.batch_size, n_predict=self.n_predict, seed=self.seed, speculative=self.speculative(),
                            context_shift=self.context_shift,
                            **{k: v for k, v in optional.items() if v is not None})

    def request_defaults(self, has_draft: bool, search: dict | None = None) -> ServerDefaults:
        """What request validation falls back to (the rest is the engine's: n_predict, seed):
        the flags, else the model's genai_config.json `search` values (as onnxruntime-genai
        would sample it), else llama-server's defaults."""
        from .engine.types import SamplingParams
        from .schemas.common import ServerDefaults

        model = {k: v for k, v in (search or {}).items() if k in ("temperature", "top_k", "top_p")}
        flags = {**({} if self.temperature is None else {"temperature": self.temperature}), **self.sampling}
        sampling = replace(SamplingParams(), **{**model, **flags})
        return ServerDefaults(n_slots=self.n_slots, speculative=self.speculative(),
                              has_draft=has_draft, sampling=sampling)
