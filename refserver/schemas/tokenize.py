"""`/tokenize`, `/detokenize` requests."""

from __future__ import annotations

from .common import RequestModel


class TokenizeRequest(RequestModel):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(RequestModel):
    tokens: list[int]
