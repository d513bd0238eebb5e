"""Request fields that OpenAI's API documents but refserver does not use.

`--strict` rejects a field no API documents (a typo such as `max_token`), never one a
standard client sends as a matter of course: the openai SDK passes `store`, `metadata`,
`service_tier`, ... straight through.  These are accepted and ignored, strict or not.
Other servers' extensions that would change the output if honoured (vLLM's
`guided_json`, `min_tokens`, ...) stay unknown: with `--strict` the client learns that
they were not applied instead of getting unconstrained text.
"""

from __future__ import annotations

# OpenAI's API reference, POST /v1/chat/completions (2026), beyond what ChatRequest reads.
OPENAI_CHAT = frozenset({
    "audio", "function_call", "functions", "metadata", "modalities", "prediction", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "safety_identifier", "service_tier", "store", "verbosity",
    "web_search_options",
})
