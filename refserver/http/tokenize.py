"""`/tokenize` and `/detokenize`."""

from __future__ import annotations

from refserver.errors import InvalidRequest
from refserver.schemas.common import encode_text
from refserver.schemas.tokenize import MAX_PIECES, DetokenizeRequest, TokenizeRequest

from .base import BaseHandler, dumps
from .offload import off_loop


def _piece(token_bytes: bytes) -> str | list[int]:
    """The token's text, or its byte list when it is not valid UTF-8 on its own."""
    try:
        return token_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return list(token_bytes)


class TokenizeHandler(BaseHandler):
    route = "/tokenize"

    async def post(self) -> None:
        req = await off_loop(self.parse_body, TokenizeRequest)
        self.write_json(await off_loop(self.answer, req))

    def answer(self, req: TokenizeRequest) -> bytes:
        """The response body, encoded (on a worker: a big content is seconds of work)."""
        tok = self.state.tokenizer
        ids = encode_text(tok, req.content, req.add_special, req.parse_special, where="'content'")
        if req.with_pieces and len(ids) > MAX_PIECES:
            raise InvalidRequest(f"with_pieces: the content is {len(ids)} tokens; at most {MAX_PIECES} come "
                                 "with pieces (send it in parts, or without with_pieces)")
        if req.with_pieces:
            return dumps({"tokens": [{"id": i, "piece": _piece(tok.token_bytes(i))} for i in ids]})
        return dumps({"tokens": ids})


class DetokenizeHandler(BaseHandler):
    route = "/detokenize"

    async def post(self) -> None:
        req = await off_loop(self.parse_body, DetokenizeRequest)
        self.write_json(await off_loop(self.answer, req))

    def answer(self, req: DetokenizeRequest) -> bytes:
        tok = self.state.tokenizer
        bad = [t for t in req.tokens if not 0 <= t < tok.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
        return dumps({"content": tok.decode(req.tokens)})
