"""Server information: /health, /props, /models, /slots, /metrics, and the 404 fallback."""

from __future__ import annotations

import dataclasses
import logging

from refserver.errors import NotFound, NotSupported, Unavailable
from refserver.metrics import CONTENT_TYPE
from refserver.schemas.completion import CompletionRequest

from .base import BaseHandler
from .state import BUILD_INFO


class HealthHandler(BaseHandler):
    route = "/health"
    public = True
    needs_model = False
    log_level = logging.DEBUG  # load balancers poll it every few seconds

    def get(self) -> None:
        self.check_ready()
        self.write_json({"status": "ok"})

    def head(self) -> None:
        """The status alone (load balancers' HEAD probes)."""
        self.check_ready()
        self.finish()


def default_generation_params(state) -> dict:
    defaults = state.defaults
    sampling = dataclasses.replace(defaults.sampling, temperature=defaults.temperature, seed=defaults.seed)
    return CompletionRequest().generation_settings(
        sampling, defaults.n_predict, defaults.seed, False, (), state.tokenizer, defaults)


class PropsHandler(BaseHandler):
    route = "/props"

    def get(self) -> None:
        state = self.state
        template = state.template
        out = {
            "default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": state.engine.n_ctx_slot,
                                            "speculative": bool(state.config.model_draft),
                                            "is_processing": False,
                                            "params": default_generation_params(state)},
            "total_slots": state.config.parallel,
            "n_ctx_train": state.model.n_ctx_train,
            "model_alias": state.model.alias,
            "model_path": state.model.path,
            "modalities": {"vision": False, "audio": False},
            "chat_template": template.source if template is not None else "",
            "chat_template_caps": template.caps if template is not None else {},
            "chat_template_names": state.template_names,
            **({"chat_template_tool_use": state.tool_template.source} if state.tool_template is not None else {}),
            "bos_token": state.tokenizer.bos_token or "",
            "eos_token": state.tokenizer.eos_token or "",
            "build_info": BUILD_INFO,
            "is_sleeping": False,
            "webui": False,
        }
        out.update(state.engine.stats())
        self.write_json(out)

    def post(self) -> None:
        if not self.state.config.props:
            raise NotSupported("This server does not support changing global properties. Start it with `--props`")
        self.json_body()
        self.write_json({"success": True})


def model_entry(m) -> dict:
    """The served model as /v1/models lists it (and /v1/models/{id} returns it)."""
    meta = {"vocab_type": 1, "n_vocab": m.n_vocab, "n_ctx_train": m.n_ctx_train, "n_embd": m.n_embd,
            "n_params": m.n_params, "size": m.size}
    return {"id": m.alias, "aliases": m.aliases or [m.alias], "tags": m.tags, "object": "model",
            "created": m.created, "owned_by": "llamacpp", "meta": meta}


class ModelsHandler(BaseHandler):
    route = "/models"
    public = True

    def get(self) -> None:
        m = self.state.model
        self.write_json({
            "object": "list",
            "data": [model_entry(m)],
            "models": [{"name": m.alias, "model": m.alias, "modified_at": "", "size": str(m.size), "digest": "",
                        "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                        "parameters": "", "details": {"parent_model": "", "format": "onnx", "family": "",
                                                      "families": [""], "parameter_size": str(m.n_params),
                                                      "quantization_level": ""}}],
        })


class ModelHandler(BaseHandler):
    """`GET /v1/models/{id}` (the openai SDK's `models.retrieve`): the model by any of its aliases."""

    route = "/v1/models/{id}"
    public = True

    def get(self, model_id: str) -> None:
        m = self.state.model
        if model_id not in (m.aliases or [m.alias]):
            shown = model_id if len(model_id) <= 200 else model_id[:200] + "..."
            raise NotFound(f"The model '{shown}' does not exist; GET /v1/models lists the served one(s)")
        self.write_json(model_entry(m))


class SlotsHandler(BaseHandler):
    route = "/slots"

    def get(self) -> None:
        if not self.state.config.slots:
            raise NotSupported("This server does not support slots endpoint. Start it with `--slots`")
        slots = self.state.engine.slots()
        wants_idle = self.get_query_argument("fail_on_no_slot", None) is not None
        if wants_idle and all(s.get("is_processing") for s in slots):
            raise Unavailable("no slot available")
        self.write_json(slots)


class MetricsHandler(BaseHandler):
    route = "/metrics"

    def get(self) -> None:
        if self.state.metrics is None:
            raise NotSupported("This server does not support metrics endpoint. Start it with `--metrics`")
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Process-Start-Time-Unix", str(int(self.state.started_at)))  # as llama-server
        self.finish(self.state.metrics.render())


class NotFoundHandler(BaseHandler):
    """Unknown paths: a 404 envelope for every method."""

    route = "unknown"
    public = True
    needs_model = False

    def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            path = self.request.path
            # the path is echoed, but not in full: a 60 kB URL makes no 60 kB error
            raise NotFound(f"File Not Found: {path if len(path) <= 200 else path[:200] + '...'}")
