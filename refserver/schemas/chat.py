"""OpenAI `/v1/chat/completions` request (CONTRACT §3); llama.cpp's native fields pass through.

The messages themselves are validated by `refserver.chat.messages.normalize_messages`
(400s that name the message); this model checks the other fields.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field

from refserver.engine.types import Constraint, GenerationRequest
from refserver.errors import InvalidRequest

from . import documented_fields
from .common import NativeParams, ServerDefaults, StreamOptions, TokenizerLike, n_within_slots


class ChatRequest(NativeParams):
    documented_fields = documented_fields.OPENAI_CHAT
    messages: Any = None
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=-1)] | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict | None = None
    reasoning_format: str | None = None
    reasoning_budget: Annotated[int, Field(ge=-1)] | None = None  # per request, as --reasoning-budget
    user: str | None = None
    verbose: bool | None = None  # llama.cpp: `__verbose` (the native final object) in the response

    def n_choices(self, defaults: ServerDefaults) -> int:
        return n_within_slots(self.n or 1, defaults)

    def callable_tools(self) -> list[dict] | None:
        """The tools the model is shown and may call: none with tool_choice "none"."""
        return self.tools if self.tools and self.tool_choice != "none" else None

    def n_probs_requested(self) -> tuple[int, int]:
        """(n_probs for the engine, top_logprobs to report); without logprobs, llama.cpp's
        `n_probs` (0 when absent) and nothing to report."""
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("'top_logprobs' requires 'logprobs': true")
        if not self.logprobs:
            return self.n_probs or 0, 0
        top = 20 if self.top_logprobs is None else self.top_logprobs
        return max(top, 1), top

    def requested_n_predict(self) -> int | None:
        """`max_completion_tokens`, else `max_tokens`, else `n_predict`; None: the server's -n."""
        for value in (self.max_completion_tokens, self.max_tokens, self.n_predict):
            if value is not None:
                return value
        return None

    def to_generation_requests(self, prompt: list[int], tokenizer: TokenizerLike, defaults: ServerDefaults,
                               constraint: Constraint | None = None, *, n: int = 1, n_probs: int | None = None,
                               banned: tuple[int, ...] = (), checkpoints: tuple = ()) -> list[GenerationRequest]:
        """`n` choices of the rendered, tokenized prompt; `banned` tokens get a -inf bias.
        `n_probs`: what the engine reports per token (the caller's API decides it)."""
        self.check_common()
        reqs = []
        for _ in range(n):
            r = self.generation_request(list(prompt), tokenizer, defaults, n_predict=self.requested_n_predict(),
                                        constraint=constraint, n_probs=n_probs, checkpoints=checkpoints)
            if banned:
                bias = r.sampling.logit_bias + tuple((t, float("-inf")) for t in banned)
                r.sampling = replace(r.sampling, logit_bias=bias)
            reqs.append(r)
        return reqs

    def check_tools(self, jinja: bool) -> None:
        uses_tools = bool(self.tools) or self.tool_choice not in (None, "auto")
        if uses_tools and not jinja:
            raise InvalidRequest("tools and tool_choice need the Jinja template engine; start the server "
                                 "with --jinja")
        if isinstance(self.tool_choice, str) and self.tool_choice not in ("auto", "none", "required"):
            raise InvalidRequest("'tool_choice' must be \"auto\", \"none\", \"required\" or "
                                 '{"type": "function", "function": {"name": ...}}')
