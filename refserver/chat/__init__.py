"""Pure chat helpers for the HTTP layer: message validation, chat templates (sandboxed
Jinja with Hugging Face semantics, plus llama.cpp's named built-ins), tool-call parsing
(Hermes/Qwen `<tool_call>` format, streaming), reasoning (`<think>` blocks) and grammar construction for tools and
`response_format` (llguidance `Constraint`s).  No numpy, no tornado."""

from refserver.chat.grammars import (
    chat_constraint,
    native_constraint,
    response_format_constraint,
    tools_constraint,
)
from refserver.chat.messages import normalize_messages
from refserver.chat.named_templates import NAMED_TEMPLATES
from refserver.chat.reasoning import ReasoningParser
from refserver.chat.templates import ChatTemplate, detect_named_template, resolve_chat_template
from refserver.chat.tool_calls import (
    ContentDelta,
    HermesToolCallParser,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
    finish_reason_for,
)

__all__ = [
    "NAMED_TEMPLATES",
    "ChatTemplate",
    "ContentDelta",
    "HermesToolCallParser",
    "ReasoningParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "chat_constraint",
    "detect_named_template",
    "finish_reason_for",
    "native_constraint",
    "normalize_messages",
    "resolve_chat_template",
    "response_format_constraint",
    "tools_constraint",
]
