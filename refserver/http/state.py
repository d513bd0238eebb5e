"""What every handler receives through `initialize()`: the config and the loaded pieces.

The server fills it in while it loads (handlers answer 503 "Loading model" until
`status` becomes "ready") and marks it "stopping" on SIGTERM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from refserver import __version__
from refserver.cli import ServerConfig
from refserver.schemas.common import ServerDefaults

from .response_store import ResponseStore

BUILD_INFO = f"b{__version__}-refserver"
SYSTEM_FINGERPRINT = f"b{__version__}"


@dataclass
class ModelSummary:
    """What /props and /models report about the model (filled in after loading)."""

    alias: str = ""
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    path: str = ""
    n_vocab: int = 0
    n_ctx_train: int = 0
    n_embd: int = 0
    n_params: int = 0
    size: int = 0
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class AppState:
    config: ServerConfig
    status: str = "loading"  # "loading" | "ready" | "stopping"
    model: ModelSummary = field(default_factory=ModelSummary)
    tokenizer: Any = None  # refserver.tokenizer.TextTokenizer
    template: Any = None  # refserver.chat.templates.ChatTemplate
    tool_template: Any = None  # the model's `tool_use` template (requests with tools), if it has one
    template_names: list = field(default_factory=list)  # names of the model's own templates
    engine: Any = None  # refserver.engine.Engine
    metrics: Any = None  # refserver.metrics.Metrics, with --metrics
    defaults: ServerDefaults = field(default_factory=ServerDefaults)
    active: set = field(default_factory=set)  # handlers with generations in flight
    bridge: Any = None  # refserver.http.bridge.EventBridge of the serving loop
    started_at: float = field(default_factory=time.time)  # the server's start (Unix time)
    responses: ResponseStore = field(default_factory=lambda: ResponseStore(0))  # stored Responses

    def __post_init__(self) -> None:
        self.responses = ResponseStore(self.config.responses_store_size)

    @property
    def ready(self) -> bool:
        """Serving: loaded, not stopping, and the engine thread alive."""
        return self.status == "ready" and (self.engine is None or self.engine.alive)
