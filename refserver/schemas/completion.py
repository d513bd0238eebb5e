"""Native llama.cpp `/completion` request (CONTRACT §2)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from refserver.engine.types import GenerationRequest
from refserver.errors import InvalidRequest

from .common import MAX_N_PROBS, NativeParams, ServerDefaults, TokenizerLike, n_within_slots, tokenize_prompts


class CompletionRequest(NativeParams):
    prompt: Any = None
    stream: bool = False
    n_cmpl: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_N_PROBS)] | None = None  # alias of n_probs
    return_tokens: bool = False
    response_fields: list[str] | None = None
    multimodal_data: list | None = None

    def n_choices(self, defaults: ServerDefaults) -> int:
        return n_within_slots(self.n_cmpl or self.n or 1, defaults, "n_cmpl")

    def to_generation_requests(self, tokenizer: TokenizerLike, defaults: ServerDefaults,
                               constraint=None) -> tuple[list[GenerationRequest], bool]:
        """One GenerationRequest per prompt and choice, and whether `prompt` was a list of prompts."""
        self.check_common()
        if self.multimodal_data:
            raise InvalidRequest("multimodal_data needs a multimodal model; this model takes text only")
        prompts, many = tokenize_prompts(self.prompt, tokenizer)
        n = self.n_choices(defaults)
        n_predict = self.requested_n_predict()
        n_probs = self.n_probs if self.n_probs is not None else self.logprobs
        reqs = [self.generation_request(list(p), tokenizer, defaults, n_predict=n_predict,
                                        constraint=constraint, n_probs=n_probs)
                for p in prompts for _ in range(n)]
        return reqs, many or n > 1
