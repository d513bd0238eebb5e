"""Plain data passed between the HTTP layer and the engine: requests in, events out.

The HTTP layer validates a request and builds a `GenerationRequest`; the engine answers
with a stream of events (`Progress`, `TokenOut`, `Finished`, `Failed`) on the request's
handle.  Nothing here imports tornado, numpy or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refserver.engine.budget import SpanBudget

DEFAULT_SAMPLERS = ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's sampling parameters and defaults (CONTRACT §2)."""

    temperature: float = 0.8
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # bias may be -inf (token banned)
    seed: int = -1  # -1: the server's --seed, or random when that is -1 too
    n_probs: int = 0
    post_sampling_probs: bool = False
    min_keep: int = 0
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    ignore_eos: bool = False
    top_n_sigma: float = -1.0  # <= 0: off
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # -1: the whole context, 0: off
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", "\"", "*")
    mirostat: int = 0  # 0 off, 1 Mirostat, 2 Mirostat 2.0 (replace the samplers list)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    adaptive_target: float = -1.0  # adaptive-p: prefer tokens near this probability (< 0: off)
    adaptive_decay: float = 0.9  # adaptive-p: decay of its running average (0..0.99)


@dataclass(frozen=True)
class Constraint:
    """Structured output, compiled by the engine with llguidance.

    kind: "json_schema" (text = JSON schema), "lark" (llguidance lark text, also regex
    via lark), "gbnf" (llama.cpp grammar), "regex".  `lazy_trigger`: the grammar applies
    only from this token text on (tool calls: "<tool_call>"), as llama.cpp's lazy grammars.
    """

    kind: str
    text: str
    lazy_trigger: str | None = None
    source: str = ""  # what the client sent it as ("'grammar'", "tool parameters schema"), for errors


@dataclass(frozen=True)
class SpeculativeParams:
    n_max: int = 16
    n_min: int = 0
    p_min: float = 0.75


@dataclass
class GenerationRequest:
    prompt: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n_predict: int | None = None  # None: the server's -n; -1: until EOS or the context is full
    stop: tuple[str, ...] = ()
    id_slot: int = -1
    cache_prompt: bool = True
    constraint: Constraint | None = None
    speculative: SpeculativeParams | None = None  # None: server defaults (when a draft is loaded)
    budget: SpanBudget | None = None  # a token budget for a span (reasoning); such requests are not speculated
    t_max_predict_ms: int = 0
    return_progress: bool = False
    timings_per_token: bool = False
    n_keep: int = 0  # context shift: tokens kept at the start (-1: the whole prompt)
    n_discard: int = 0  # context shift: tokens dropped after them (0: half of the rest)
    # Prompt positions worth keeping in the cross-slot prompt cache, with their kind
    # ("system" prefixes outlive "user" ones, which outlive "assistant" tails on eviction).
    checkpoints: tuple[tuple[int, str], ...] = ()
    # Log-probabilities of the prompt's own tokens (OpenAI `echo` + `logprobs`): pre-fill
    # keeps every position's logits and sends a `PromptProbs` event before the first token.
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class TokenProb:
    id: int
    token: str
    bytes: list[int]
    value: float  # a log-probability; a probability in 0..1 when the request set post_sampling_probs


@dataclass(frozen=True)
class TokenProbs:
    """The sampled token's own entry plus the top `n_probs` candidates, sorted."""

    chosen: TokenProb
    top: list[TokenProb]


@dataclass(frozen=True)
class Progress:
    total: int
    cache: int
    processed: int
    time_ms: float

    def timings(self) -> dict:
        """llama.cpp's `timings` of a chunk carrying `prompt_progress`: the prompt so far."""
        n = self.processed - self.cache
        return {"cache_n": self.cache, "prompt_n": n, "prompt_ms": self.time_ms,
                "prompt_per_token_ms": self.time_ms / n if n else 0.0,
                "prompt_per_second": 1000.0 * n / self.time_ms if self.time_ms > 0 else 0.0,
                "predicted_n": 0, "predicted_ms": 0.0, "predicted_per_token_ms": 0.0, "predicted_per_second": 0.0}


@dataclass(frozen=True)
class TokenOut:
    """One generated token.  `text` is what may be shown now: text that could still
    become a stop string or is a partial UTF-8 sequence is held back and released in a
    later event (or dropped when it turns out to be the stop string)."""

    token: int
    text: str
    probs: TokenProbs | None = None
    timings: dict | None = None  # with timings_per_token


@dataclass(frozen=True)
class Finished:
    stop_type: str  # "eos" | "limit" | "word" | "none"
    stopping_word: str
    truncated: bool
    text: str  # held-back text released at the end ("" normally)
    tokens_predicted: int
    tokens_evaluated: int  # prompt tokens
    tokens_cached: int  # prompt + generated tokens now in the slot's cache
    id_slot: int
    timings: dict  # cache_n, prompt_n, prompt_ms, ..., draft_n, draft_n_accepted
    seed: int  # the seed actually used


@dataclass(frozen=True)
class PromptProbs:
    """Each prompt token's log-probability given the tokens before it (with the top
    `n_probs` alternatives); the first token has none (None)."""

    entries: tuple[TokenProbs | None, ...]


@dataclass(frozen=True)
class Failed:
    error: Exception  # a RefserverError for anything the client should see as such


Event = Progress | PromptProbs | TokenOut | Finished | Failed
