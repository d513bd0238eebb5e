"""The chat pipeline shared by `/v1/chat/completions`, `/v1/responses` and `/v1/messages`
(whose request models translate into a `ChatRequest`): the rendered prompt, the engine
requests and the per-choice output parsers (reasoning, then tool calls) of their text.

Reasoning settings: `--reasoning-format` (or the request's `reasoning_format`) "none"
leaves `<think>` (or the family's block) text in content; `--reasoning on|off` and `--reasoning-budget 0` set the
template's `enable_thinking` unless the request's `chat_template_kwargs` does; a budget
N > 0 (`--reasoning-budget`, a request's `reasoning_budget`, Anthropic's
`thinking.budget_tokens`) makes the engine force `</think>` after N reasoning tokens.  A prompt
that ends inside an open `<think>` block (templates that open it themselves) starts the
parser in reasoning.

Tool calls are parsed and constrained in the format the chat template implies
(`ChatTemplate.tool_call_format`); formats that structure every answer (gpt-oss's channels,
functionary v3.2's recipients, Command-R7B's response markers) are parsed with or without
tools.  A family's reasoning block may have its own markers (`reasoning_markers`), used by
the parser, the budget and the forced-call grammar alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from refserver.chat.formats import (
    CALL_MARKERS,
    PLAN_FIRST,
    WHOLE_OUTPUT,
    plain_answer_prefix,
    reasoning_markers,
)
from refserver.chat.grammars import chat_constraint
from refserver.chat.reasoning import opened_by_prompt
from refserver.engine.budget import SpanBudget
from refserver.engine.types import GenerationRequest
from refserver.errors import InvalidRequest, RefserverError
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
    tools = req.callable_tools()
    template = state.tool_template if tools and state.tool_template is not None else state.template
    return template.render(req.messages, tools=tools, add_generation_prompt=req.add_generation_prompt,
                           template_kwargs=template_kwargs(state.config, req),
                           continue_final_message=bool(req.continue_final_message))


def call_ban(req: ChatRequest, tokenizer, fmt: str | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """tool_choice "none": the model may not open a call in the template's format.  Returns
    the format's call markers that are one token (banned by a -inf bias, which holds beside
    any constraint) and, when some marker is several tokens, all of them for a grammar
    (`forbid_calls_constraint`; a request's own response_format or grammar wins over it,
    and then markup the model writes is content: no tool-call parser runs)."""
    if not (req.tools and req.tool_choice == "none"):
        return (), ()
    markers = CALL_MARKERS.get(fmt or "", ())
    ids = [tokenizer.encode(m) for m in markers]
    single = tuple(i[0] for i in ids if len(i) == 1)
    return single, (markers if len(single) < len(markers) else ())


def system_checkpoint(state, req: ChatRequest, text: str, prompt: list[int]) -> tuple[tuple[int, str], ...]:
    """The prompt's leading system message(s) as a "system" prompt-cache checkpoint (it
    outlives per-conversation entries on eviction), when the rendered system part is a
    prefix of the prompt in text and in tokens; otherwise none."""
    msgs = req.messages if isinstance(req.messages, list) else []
    k = 0
    while k < len(msgs) and isinstance(msgs[k], dict) and msgs[k].get("role") == "system":
        k += 1
    if k == 0 or k == len(msgs):
        return ()
    try:
        head = state.template.render(msgs[:k], tools=req.callable_tools(), add_generation_prompt=False,
                                     template_kwargs=template_kwargs(state.config, req))
    except RefserverError:  # a template that refuses a system-only conversation
        return ()
    if not head or not text.startswith(head):
        return ()
    ids = encode_text(state.tokenizer, head, True)
    n = len(ids)
    return ((n, "system"),) if 0 < n < len(prompt) and prompt[:n] == ids else ()


def prepare_chat(state, req: ChatRequest, n: int = 1, n_probs: int | None = None) -> ChatGeneration:
    """Validate a chat request and turn it into `n` engine requests (one prompt) and the
    factory of each choice's parsers."""
    req.check_tools(state.config.jinja)
    text = render_prompt(state, req)
    prompt = encode_text(state.tokenizer, text, True, where="the rendered chat prompt")
    tool_format = state.template.tool_call_format  # refserver.chat.formats
    callable_tools = req.callable_tools()
    use_tools = tool_format is not None and (callable_tools is not None or tool_format in WHOLE_OUTPUT)
    fmt = req.reasoning_format or state.config.reasoning_format
    think = reasoning_markers(tool_format)
    opened = opened_by_prompt(text, think[0])
    banned, call_markers = call_ban(req, state.tokenizer, tool_format)
    constraint = chat_constraint(
        tools=req.tools if callable_tools is not None else None, tool_choice=req.tool_choice,
        parallel_tool_calls=bool(req.parallel_tool_calls), response_format=req.response_format,
        json_schema=req.json_schema, grammar=req.grammar, token_names=state.tokenizer.added_token_names,
        fmt=tool_format, think_open=opened and fmt != "none", think=think,
        think_first=tool_format in PLAN_FIRST, call_markers=call_markers, plain_prefix=plain_answer_prefix(tool_format, text))
    reqs = req.to_generation_requests(prompt, state.tokenizer, state.defaults, constraint, n=n, n_probs=n_probs,
                                      banned=banned,
                                      checkpoints=system_checkpoint(state, req, text, prompt))
    budget = state.config.reasoning_budget if req.reasoning_budget is None else req.reasoning_budget
    if budget > 0 and fmt != "none":
        span = SpanBudget(tuple(state.tokenizer.encode(think[0])), tuple(state.tokenizer.encode(think[1])),
                          budget, opened)
        reqs = [replace(r, budget=span) for r in reqs]
    parsers = select_parsers(tools=use_tools, tool_format=tool_format or "hermes", tool_defs=callable_tools,
                             reasoning_format=fmt, reasoning_opened=opened, reasoning_markers=think)
    return ChatGeneration(text, reqs, parsers, use_tools)
