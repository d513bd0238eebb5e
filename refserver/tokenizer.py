"""The model's tokenizer, read from `tokenizer.json` + `tokenizer_config.json`.

Wraps `tokenizers.Tokenizer` with what a server needs beyond encode/decode: the raw
bytes of every token (so streamed text is assembled byte-exactly and never split inside
a UTF-8 character), BOS/EOS handling, and the set of end-of-generation ids.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path

from tokenizers import Tokenizer

_LONG_TEXT = 4096  # characters: tokenized without holding the GIL from here on


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


# Fill-in-the-middle token spellings: Qwen / StarCoder / SantaCoder / CodeLlama.
FIM_TOKENS = (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
              ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), ("\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>"),
              ("<PRE>", "<SUF>", "<MID>"))

def _token_text(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # AddedToken serialised as an object
        value = value.get("content")
    return value


class TextTokenizer:
    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.path = model_dir / "tokenizer.json"
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} not found: a model directory needs tokenizer.json")
        self.tok = Tokenizer.from_file(str(self.path))
        self.config = _read_json(model_dir / "tokenizer_config.json")
        generation = _read_json(model_dir / "generation_config.json")
        model_config = _read_json(model_dir / "config.json")
        self.vocab_size = self.tok.get_vocab_size()
        self.bos_token = _token_text(self.config, "bos_token")
        self.eos_token = _token_text(self.config, "eos_token")
        self.bos_id = self._id_of(self.bos_token, generation.get("bos_token_id", model_config.get("bos_token_id")))
        self.eos_id = self._id_of(self.eos_token, generation.get("eos_token_id", model_config.get("eos_token_id")))
        if self.bos_token is None and self.bos_id is not None:
            self.bos_token = self.tok.id_to_token(self.bos_id)
        if self.eos_token is None and self.eos_id is not None:
            self.eos_token = self.tok.id_to_token(self.eos_id)
        self.add_bos = bool(self.config.get("add_bos_token", self.bos_id is not None))
        self.eog_ids = frozenset(self._eog_ids(generation, model_config))
        #: text of every added token: llguidance treats all of them as special tokens
        self.added_token_names = frozenset(t["content"] for t in self._added_tokens())
        self._decoder_kind = _decoder_kind(json.loads(self.tok.to_str()).get("decoder") or {})
        self._pieces = tuple(self._piece_bytes(i) for i in range(self.vocab_size))

    # ------------------------------------------------------------------ setup
    def _added_tokens(self) -> list[dict]:
        return json.loads(self.tok.to_str()).get("added_tokens", [])

    def _id_of(self, text: str | None, fallback) -> int | None:
        if text is not None and self.tok.token_to_id(text) is not None:
            return self.tok.token_to_id(text)
        if isinstance(fallback, list):
            fallback = fallback[0] if fallback else None
        return fallback

    def _eog_ids(self, generation: dict, model_config: dict) -> set[int]:
        ids: set[int] = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(i for i in source if isinstance(i, int))
        if self.eos_id is not None:
            ids.add(self.eos_id)
        for text in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            tid = self.tok.token_to_id(text)
            if tid is not None:
                ids.add(tid)
        return ids

    def _piece_bytes(self, token_id: int) -> bytes:
        piece = self.tok.id_to_token(token_id)
        if piece is None:
            return b""
        kind = self._decoder_kind
        if kind == "byte_level":
            table = _byte_level_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            return piece.encode()
        if kind == "metaspace":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode()
        return self.tok.decode([token_id], skip_special_tokens=False).encode()

    def _ids(self, text: str) -> list[int]:
        """Token ids of plain text.  `Tokenizer.encode` holds the GIL throughout (seconds for
        a megabyte, during which the server's IOLoop stalls); `encode_batch` releases it, so
        long texts go that way."""
        if len(text) < _LONG_TEXT:
            return self.tok.encode(text, add_special_tokens=False).ids
        return self.tok.encode_batch([text], add_special_tokens=False)[0].ids

    # ------------------------------------------------------------------ public
    def encode(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; `add_special` prepends BOS when the model uses one."""
        if parse_special:
            ids = self._ids(text)
        else:
            ids = self._encode_literal(text)
        if add_special and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def _encode_literal(self, text: str) -> list[int]:
        """Encode without recognising special-token text (it is tokenized as plain text)."""
        specials = [t["content"] for t in self._added_tokens() if t["special"]]
        if not any(s in text for s in specials):
            return self._ids(text)
        # Break every special marker with a zero-width split, then drop the joiner tokens.
        out: list[int] = []
        i = 0
        while i < len(text):
            hit = min(((text.find(s, i), s) for s in specials if text.find(s, i) >= 0), default=None)
            if hit is None:
                out += self._ids(text[i:])
                break
            pos, s = hit
            if pos > i:
                out += self._ids(text[i:pos])
            out += self.tok.encode(s[0], add_special_tokens=False).ids
            out += self.tok.encode(s[1:], add_special_tokens=False).ids
            i = pos + len(s)
        return out

    def decode(self, ids: list[int]) -> str:
        return self.token_bytes_of(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes token `token_id` contributes to the text (b"" if unknown)."""
        if 0 <= token_id < len(self._pieces):
            return self._pieces[token_id]
        return b""

    def token_bytes_of(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    @property
    def pieces(self) -> tuple[bytes, ...]:
        """Every token's bytes, by id (what `token_bytes` returns)."""
        return self._pieces

    def piece(self, token_id: int) -> str:
        """The token's text, with invalid UTF-8 replaced (for display in probabilities)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    @cached_property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) fill-in-the-middle token ids, when the vocabulary has them."""
        for names in FIM_TOKENS:
            ids = [self.tok.token_to_id(name) for name in names]
            if all(i is not None for i in ids):
                return ids[0], ids[1], ids[2]
        return None


def _decoder_kind(decoder: dict) -> str:
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    if "ByteLevel" in kinds:
        return "byte_level"
    if "Metaspace" in kinds or "ByteFallback" in kinds or "Replace" in kinds:
        return "metaspace"
    return "other"


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text())
