"""OpenAI `/v1/completions` request (CONTRACT §3); llama.cpp's native fields pass through."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import Field

from refserver.engine.types import GenerationRequest
from refserver.errors import InvalidRequest

from .common import (
    NativeParams,
    ServerDefaults,
    StreamOptions,
    TokenizerLike,
    n_within_slots,
    tokenize_prompts,
)


class OAICompletionRequest(NativeParams):
    prompt: Any = None
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None

    def n_choices(self, defaults: ServerDefaults) -> int:
        return n_within_slots(self.n or 1, defaults)

    def top_n_probs(self) -> int:
        """Top tokens to report per position: `logprobs`, else llama.cpp's `n_probs`; 0 for none."""
        return self.logprobs if self.logprobs is not None else (self.n_probs or 0)

    def to_generation_requests(self, tokenizer: TokenizerLike, defaults: ServerDefaults,
                               constraint=None) -> list[GenerationRequest]:
        if self.prompt is None:
            raise InvalidRequest("'prompt' is required")
        if self.best_of is not None and self.best_of != 1:
            raise InvalidRequest("'best_of' is not supported")
        self.check_common()
        prompts, _ = tokenize_prompts(self.prompt, tokenizer)
        if self.suffix:
            prompts = [fim_prompt(p, self.suffix, tokenizer) for p in prompts]
        n = self.n_choices(defaults)
        n_predict = self.requested_n_predict()
        reqs = [self.generation_request(list(p), tokenizer, defaults, n_predict=n_predict,
                                        constraint=constraint, n_probs=self.top_n_probs())
                for p in prompts for _ in range(n)]
        if self.echo and self.logprobs is not None:
            # every prompt position is evaluated (a cached prefix would have no logits)
            reqs = [dataclasses.replace(r, prompt_logprobs=True, cache_prompt=False) for r in reqs]
        return reqs

    def echo_texts(self, tokenizer: TokenizerLike) -> list[str]:
        """The text `echo` puts before each prompt's completion: a string prompt as sent,
        a token prompt decoded."""
        prompts, many = tokenize_prompts(self.prompt, tokenizer)
        originals = self.prompt if many else [self.prompt]
        return [o if isinstance(o, str) else tokenizer.decode(t) for o, t in zip(originals, prompts)]


def fim_prompt(prefix: list[int], suffix: str, tokenizer: TokenizerLike) -> list[int]:
    """`suffix` as fill-in-the-middle (prefix-suffix-middle order): [BOS] PRE prefix SUF
    suffix MID; the model then writes what goes between them."""
    fim = getattr(tokenizer, "fim_ids", None)
    if fim is None:
        raise InvalidRequest("'suffix' needs a fill-in-the-middle model (one whose vocabulary has "
                             "<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|> or the like); this model has none")
    bos = getattr(tokenizer, "bos_id", None)
    head = [bos] if prefix and prefix[0] == bos else []
    pre, suf, mid = fim
    return head + [pre] + prefix[len(head):] + [suf] + tokenizer.encode(suffix, parse_special=False) + [mid]
