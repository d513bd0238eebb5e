"""`/tokenize`, `/detokenize` requests."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .common import RequestModel

# Bounds (README, Limits): 1 Mi characters is more text than any context refserver serves;
# with pieces each token costs ~30 bytes of response, so that form stops at 64 Ki tokens.
MAX_TOKENIZE_CHARS = 1 << 20
MAX_PIECES = 1 << 16
MAX_DETOKENIZE_TOKENS = 1 << 20


class TokenizeRequest(RequestModel):
    content: Annotated[str, Field(max_length=MAX_TOKENIZE_CHARS)]
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(RequestModel):
    tokens: Annotated[list[int], Field(max_length=MAX_DETOKENIZE_TOKENS)]
