"""The streaming core: engine events → typed per-choice deltas, outside Tornado.

Every response renderer (chat, `/v1/completions`, native `/completion`, and the Responses
and Messages APIs) consumes the same deltas; a non-streamed response is the fold of the
deltas a streamed one would have sent, so the two agree by construction.

Modules (import them directly; this package imports nothing so that
`refserver.chat.tool_calls` may use `stream.deltas` without a cycle):

- `bridge`: `EventBridge` / `Inbox`, carrying events from the engine thread to the loop.
- `generation`: `Generation(engine, bridge, requests, n=, parsers=)` submits all requests
  (all or none; the engine's synchronous errors propagate) and is consumed with
  `async for choice, deltas in gen.stream(transport, keepalive)` (streamed) or
  `results = await gen.collect()` (non-streamed: a `ChoiceResult` per choice).  `cancel()`,
  `client_gone()` (then the consumer gets `ClientGone`), `shutdown()` (then `Unavailable`),
  `usage()`, `n_prompt_tokens`, `n_predicted_tokens`.  A `Transport` (the HTTP handler)
  has `last_write`, `async drain()` (flush what was written) and `async keepalive()`.
- `choice`: `ChoiceStream` (`index`, `group`, `request`, `id_slot`, `result`,
  `feed(event) -> list[Delta]`), `ChoiceResult` (`content`, `raw_text`, `reasoning_text`,
  `tool_calls`, `tokens`, `logprobs`, `finish`, `finished`), `Usage` and `usage(choices)`.
- `deltas`: `ProgressDelta`, `TokenDelta` (one per generated token: EOS and tool-call
  markup included, with its logprob entry), `TextDelta`, `ReasoningDelta`,
  `ToolCallStart`, `ToolCallArgs`, `FinishDelta` (`reason`: OpenAI's finish_reason).
- `parsers`: the output-parser protocol (`feed` / `finish`), `ParserChain`, and
  `select_parsers(tools=, tool_format=, reasoning_format=)`, the one place that picks a
  request's parsers (`TOOL_CALL_FORMATS`, `REASONING_FORMATS` register new ones).

Logprob policy (stream and non-stream alike): one entry per `TokenDelta` that has
`probs`.  A streamed chat chunk carries the entries of the tokens since the choice's
previous chunk, whatever the chunk holds (text, reasoning, tool call, finish).
"""
