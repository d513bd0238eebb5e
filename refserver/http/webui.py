"""What a browser gets: the chat page at `/`, the API docs at `/docs`, and the OpenAPI
schema of every route at `/openapi.json` (built from the routes and their pydantic
request models, so it cannot drift from what the handlers accept)."""

from __future__ import annotations

import re
from pathlib import Path

import tornado.web

from refserver.errors import NotFound
from refserver.schemas.chat import ChatRequest
from refserver.schemas.completion import CompletionRequest
from refserver.schemas.messages import CountTokensRequest, MessagesRequest
from refserver.schemas.oai_completion import OAICompletionRequest
from refserver.schemas.responses import ResponsesRequest
from refserver.schemas.tokenize import DetokenizeRequest, TokenizeRequest

from .base import BaseHandler
from .state import BUILD_INFO

STATIC = Path(__file__).resolve().parent / "static"

# Request body model of each (path, method); bodies of other POSTs are free-form JSON.
REQUEST_MODELS = {
    "/completion": CompletionRequest, "/completions": CompletionRequest,
    "/v1/completions": OAICompletionRequest,
    "/chat/completions": ChatRequest, "/v1/chat/completions": ChatRequest, "/apply-template": ChatRequest,
    "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest, "/v1/responses": ResponsesRequest,
    "/v1/messages": MessagesRequest, "/v1/messages/count_tokens": CountTokensRequest,
}


class _StaticPage(BaseHandler):
    public = True
    needs_model = False
    page = ""

    def get(self) -> None:
        if not self.state.config.webui:
            raise NotFound("File Not Found: the web UI is off (--no-webui)")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC / self.page).read_bytes())


class ChatPageHandler(_StaticPage):
    """The chat page: one static HTML + JS file, no build step, nothing from a CDN."""

    route = "/"
    page = "index.html"


class DocsHandler(_StaticPage):
    """A readable list of every route and its request body, from /openapi.json."""

    route = "/docs"
    page = "docs.html"


class OpenAPIHandler(BaseHandler):
    """The OpenAPI 3.1 schema of every route."""

    route = "/openapi.json"
    public = True
    needs_model = False

    def get(self) -> None:
        from .app import ROUTES  # app imports this module

        self.write_json(openapi_schema(ROUTES))


def _methods(cls: type) -> list[str]:
    """The HTTP methods a handler class implements itself (not Tornado's 405 defaults)."""
    base = tornado.web.RequestHandler
    return [m for m in ("get", "head", "post", "delete") if getattr(cls, m) is not getattr(base, m)]


def openapi_schema(routes: list[tuple[str, type]]) -> dict:
    components: dict[str, dict] = {}
    paths: dict[str, dict] = {}
    for pattern, cls in routes:
        path = re.sub(r"\([^)]*\)", "{id}", pattern)
        summary = (cls.__doc__ or "").strip().split("\n")[0] or cls.route
        for method in _methods(cls):
            op: dict = {"summary": summary, "responses": {
                "200": {"description": "success"},
                "default": {"description": 'error: {"error": {"code", "message", "type"}}'}}}
            if "{id}" in path:
                op["parameters"] = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
            model = REQUEST_MODELS.get(path) if method == "post" else None
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0", "info": {"title": "refserver", "version": BUILD_INFO},
            "paths": paths, "components": {"schemas": components}}
