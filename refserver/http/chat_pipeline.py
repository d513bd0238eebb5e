"""The chat pipeline shared by `/v1/chat/completions`, `/v1/responses` and `/v1/messages`
(whose request models translate into a `ChatRequest`): the rendered prompt, the engine
requests and the per-choice output parsers (reasoning, then tool calls) of their text.

Reasoning settings: `--reasoning-format` (or the request's `reasoning_format`) "none"
leaves `<think>` text in content; `--reasoning on|off` and `--reasoning-budget 0` set the
template's `enable_thinking` unless the request's `chat_template_kwargs` does; a budget
N > 0 (`--reasoning-budget`, a request's `reasoning_budget`, Anthropic's
`thinking.budget_tokens`) makes the engine force `</think>` after N reasoning tokens.  A prompt
that ends inside an open `<think>` block (templates that open it themselves) starts the
parser in reasoning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from refserver.chat.grammars import TOOL_START, response_format_constraint, tools_constraint
from refserver.chat.reasoning import THINK_END, THINK_START, opened_by_prompt
from refserver.engine.budget import SpanBudget
from refserver.engine.types import GenerationRequest
from refserver.errors import InvalidRequest
from refserver.schemas.chat import ChatRequest
from refserver.schemas.common import encode_text
from refserver.stream.parsers import ParserChain, select_parsers


@dataclass
class ChatGeneration:
    prompt_text: str
    requests: list[GenerationRequest]
    parsers: Callable[[], ParserChain]
    use_tools: bool


def template_kwargs(config, req: ChatRequest) -> dict | None:
    """The request's chat_template_kwargs, with enable_thinking from --reasoning (or a
    reasoning budget of 0) when unset."""
    kwargs = dict(req.chat_template_kwargs or {})
    budget = config.reasoning_budget if req.reasoning_budget is None else req.reasoning_budget
    if "enable_thinking" not in kwargs:
        if config.reasoning == "off" or budget == 0:
            kwargs["enable_thinking"] = False
        elif config.reasoning == "on":
            kwargs["enable_thinking"] = True
    return kwargs or None


def render_prompt(state, req: ChatRequest) -> str:
    """The chat template applied to the request's messages (and tools)."""
    if req.messages is None:
        raise InvalidRequest("'messages' is required")
    add_gen = True if req.add_generation_prompt is None else req.add_generation_prompt
    tools = req.callable_tools()
    template = state.tool_template if tools and state.tool_template is not None else state.template
    return template.render(req.messages, tools=tools, add_generation_prompt=add_gen,
                           template_kwargs=template_kwargs(state.config, req))


def forbid_tool_calls(request: GenerationRequest, tokenizer) -> GenerationRequest:
    """tool_choice "none": the model may not open a tool call (a -inf bias on the marker
    when it is one token; otherwise the parser still keeps markup out of content)."""
    marker = tokenizer.encode(TOOL_START)
    if len(marker) != 1:
        return request
    sampling = replace(request.sampling, logit_bias=request.sampling.logit_bias + ((marker[0], float("-inf")),))
    return replace(request, sampling=sampling)


def _constraint(state, req: ChatRequest, use_tools: bool):
    rf = response_format_constraint(req.response_format, json_schema=req.json_schema, grammar=req.grammar or None)
    if not use_tools:
        return rf
    tc = tools_constraint(req.tools, req.tool_choice or "auto", bool(req.parallel_tool_calls),
                          token_names=state.tokenizer.added_token_names)
    if rf is not None and tc is not None:
        raise InvalidRequest("'tools' cannot be combined with response_format, json_schema or grammar")
    return tc


def prepare_chat(state, req: ChatRequest, n: int = 1, n_probs: int | None = None) -> ChatGeneration:
    """Validate a chat request and turn it into `n` engine requests (one prompt) and the
    factory of each choice's parsers."""
    req.check_tools(state.config.jinja)
    req.check_common()
    text = render_prompt(state, req)
    prompt = encode_text(state.tokenizer, text, True, where="the rendered chat prompt")
    use_tools = req.callable_tools() is not None
    constraint = _constraint(state, req, use_tools)
    n_predict = req.requested_n_predict()
    reqs = [req.generation_request(list(prompt), state.tokenizer, state.defaults, n_predict=n_predict,
                                   constraint=constraint, n_probs=n_probs) for _ in range(n)]
    if req.tools and req.tool_choice == "none":
        reqs = [forbid_tool_calls(r, state.tokenizer) for r in reqs]
    fmt = req.reasoning_format or state.config.reasoning_format
    opened = opened_by_prompt(text)
    budget = state.config.reasoning_budget if req.reasoning_budget is None else req.reasoning_budget
    if budget > 0 and fmt != "none":
        span = SpanBudget(tuple(state.tokenizer.encode(THINK_START)), tuple(state.tokenizer.encode(THINK_END)),
                          budget, opened)
        reqs = [replace(r, budget=span) for r in reqs]
    parsers = select_parsers(tools=use_tools, reasoning_format=fmt, reasoning_opened=opened)
    return ChatGeneration(text, reqs, parsers, use_tools)
