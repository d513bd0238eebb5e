"""The Tornado application: every route and the handler that serves it."""

from __future__ import annotations

import tornado.web

from .chat import ApplyTemplateHandler, ChatHandler
from .completion import CompletionHandler
from .info import (
    HealthHandler,
    MetricsHandler,
    ModelHandler,
    ModelsHandler,
    NotFoundHandler,
    PropsHandler,
    SlotsHandler,
)
from .messages import CountTokensHandler, MessagesHandler
from .oai_completion import OAICompletionHandler
from .responses import CancelResponseHandler, InputItemsHandler, ResponsesHandler, StoredResponseHandler
from .state import AppState
from .tokenize import DetokenizeHandler, TokenizeHandler
from .webui import ChatPageHandler, DocsHandler, OpenAPIHandler

ROUTES = [
    (r"/", ChatPageHandler),
    (r"/docs", DocsHandler),
    (r"/openapi.json", OpenAPIHandler),
    (r"/health", HealthHandler),
    (r"/v1/health", HealthHandler),
    (r"/props", PropsHandler),
    (r"/models", ModelsHandler),
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/(.+)", ModelHandler),
    (r"/completion", CompletionHandler),
    (r"/completions", CompletionHandler),
    (r"/v1/completions", OAICompletionHandler),
    (r"/chat/completions", ChatHandler),
    (r"/v1/chat/completions", ChatHandler),
    (r"/v1/responses", ResponsesHandler),
    (r"/v1/responses/([^/]+)", StoredResponseHandler),
    (r"/v1/responses/([^/]+)/input_items", InputItemsHandler),
    (r"/v1/responses/([^/]+)/cancel", CancelResponseHandler),
    (r"/v1/messages", MessagesHandler),
    (r"/v1/messages/count_tokens", CountTokensHandler),
    (r"/apply-template", ApplyTemplateHandler),
    (r"/tokenize", TokenizeHandler),
    (r"/detokenize", DetokenizeHandler),
    (r"/slots", SlotsHandler),
    (r"/metrics", MetricsHandler),
]


def make_app(state: AppState) -> tornado.web.Application:
    handlers = [(pattern, cls, {"state": state}) for pattern, cls in ROUTES]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        compress_response=False,
        log_function=lambda handler: None,  # BaseHandler.on_finish writes the one log line
    )
