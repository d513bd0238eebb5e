"""Structured output with llguidance: a token mask per step from a grammar.

`ConstraintCompiler` builds one `llguidance.LLTokenizer` per tokenizer (lazily; it costs
~0.1-1 s) and turns a `Constraint` into a per-request `ConstraintState`, raising
`InvalidRequest` with llguidance's own message when the grammar is bad (checked at
submit).  Kinds: "json_schema" (compact JSON: `whitespace_flexible` off, so random
logits cannot emit endless spaces), "gbnf" (llama.cpp grammars via llguidance's
converter; text starting with "%llguidance" is passed through as lark), "lark", "regex".

The engine masks logits with `allowed()` before sampling, calls `accept()` with every
generated token, and finishes the request with stop_type "eos" once `done()` (the
matcher is stopped: nothing but EOS could follow).  While the grammar is accepting, EOS
stays allowed, so the model may also end there by itself.

Lazy constraints (`Constraint.lazy_trigger`, llama.cpp's lazy grammars, used for tool
calls): generation is unconstrained until the generated text contains the trigger.
From then on the grammar constrains the text that comes AFTER the trigger, up to the
end of generation.  So the grammar text must be written for what follows the trigger,
not including it.  For Hermes-style tool calls with trigger "<tool_call>", write e.g.
the lark grammar

    start: ws call ws "</tool_call>" (ws "<tool_call>" ws call ws "</tool_call>")* ws
    call: %json { ...schema of {"name": ..., "arguments": ...} ... }
    ws: /[ \\t\\n]*/

(or a json_schema constraint when exactly one JSON value follows the trigger).
If the trigger token also carried bytes after the trigger, they are fed to the grammar
first.  A constraint never fails open: when the grammar rejects a token or leaves no
token allowed, `error` is set and the engine ends the request with an error.  With no
lazy trigger the grammar describes the whole generated text.

Some grammars validate yet exceed llguidance's limits once used (a regex such as
/a{65535}{65535}/, a schema whose required `$ref` recurses forever): `compile` tries the
first step on a copy of the matcher so that these are a 400 before anything is streamed.
Errors carry llguidance's first line only, not the parser state it appends.
"""

from __future__ import annotations

import functools
import json
import re
import threading

import numpy as np

from refserver import errors
from refserver.engine.types import Constraint
from refserver.tokenizer import TextTokenizer

_UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


def _unicode_escapes_to_chars(gbnf: str) -> str:
    """GBNF `\\uXXXX` / `\\UXXXXXXXX` escapes as characters (or `\\xNN` below 0x80):
    llguidance's GBNF converter turns `\\u0041` into an invalid `\\u41`."""
    def repl(m: re.Match) -> str:
        code = int(m.group(2) or m.group(3), 16)
        return m.group(1) + (f"\\x{code:02x}" if code < 0x80 else chr(code))
    return _UNICODE_ESCAPE.sub(repl, gbnf)


@functools.lru_cache(maxsize=256)
def to_llguidance_grammar(c: Constraint) -> str:
    """The llguidance grammar (what LLMatcher takes) for a Constraint: the one place a
    Constraint is turned into llguidance's form (cached: the n choices of a request, and
    requests repeating a schema, convert it once)."""
    import llguidance as L
    try:
        if c.kind == "json_schema":
            return L.LLMatcher.grammar_from_json_schema(json.loads(c.text), defaults={"whitespace_flexible": False})
        if c.kind == "lark":
            return L.LLMatcher.grammar_from_lark(c.text)
        if c.kind == "regex":
            return L.LLMatcher.grammar_from_regex(c.text)
        if c.kind == "gbnf":
            if c.text.lstrip().startswith("%llguidance"):
                return L.LLMatcher.grammar_from_lark(c.text)
            return L.grammar_from("gbnf", _unicode_escapes_to_chars(c.text))
    except Exception as e:  # llguidance converter and JSON errors: the user's grammar is at fault
        raise errors.InvalidRequest(f"invalid {_what(c)}: {e}") from e
    raise errors.InvalidRequest(f"unknown constraint kind {c.kind!r}")


def _what(c: Constraint) -> str:
    return c.source or {"json_schema": "JSON schema"}.get(c.kind, f"{c.kind} grammar")


def validate_constraint(c: Constraint, lltokenizer=None) -> str:
    """The llguidance grammar of `c`; InvalidRequest (with llguidance's message, warnings
    included: a constraint never fails open) when it does not compile."""
    import llguidance
    grammar = to_llguidance_grammar(c)
    msg = llguidance.LLMatcher.validate_grammar(grammar, lltokenizer)
    if msg:
        raise errors.InvalidRequest(f"invalid {_what(c)}: {msg}")
    return grammar


class ConstraintCompiler:
    def __init__(self, tokenizer: TextTokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._lltok = None
        self._lock = threading.Lock()

    def lltokenizer(self):
        with self._lock:
            if self._lltok is None:
                import llguidance
                eos = sorted(self.tokenizer.eog_ids) or None
                n_vocab = max(self.vocab_size, self.tokenizer.vocab_size)
                self._lltok = llguidance.LLTokenizer(str(self.tokenizer.path), n_vocab=n_vocab, eos_token=eos)
            return self._lltok

    def compile(self, c: Constraint) -> ConstraintState:
        """Convert and validate `c` against the model's tokenizer (the only check a
        constraint gets), then try its first step; raises InvalidRequest."""
        state = ConstraintState(self, validate_constraint(c, self.lltokenizer()), c.lazy_trigger)
        err = state.first_step_error()
        if err:
            raise errors.InvalidRequest(f"the grammar cannot be followed: {err}")
        return state


def short_error(message: str | None) -> str:
    """llguidance's error without the parser state dump it appends."""
    first = (message or "").strip().split("\n", 1)[0]
    return first if len(first) <= 300 else first[:300] + "..."


class ConstraintState:
    """One request's matcher; inactive until the lazy trigger has been generated."""

    def __init__(self, compiler: ConstraintCompiler, grammar: str, trigger: str | None):
        self.compiler = compiler
        self.grammar = grammar
        self.trigger = trigger.encode() if trigger else None
        self.text = b""  # generated bytes while waiting for the trigger
        self.matcher = None if self.trigger else self._new_matcher()
        self.error: str | None = None

    def _new_matcher(self):
        import llguidance
        import llguidance.numpy
        tok = self.compiler.lltokenizer()
        self._mask = llguidance.numpy.allocate_token_bitmask(1, tok.vocab_size)
        return llguidance.LLMatcher(tok, self.grammar)

    def first_step_error(self) -> str | None:
        """Why the grammar fails at its first step (on a copy: the state is unchanged):
        no token allowed, or its forced first token exceeds llguidance's limits."""
        matcher = self.matcher if self.matcher is not None else self._new_matcher()
        probe = matcher.deep_copy()
        forced = probe.compute_ff_tokens()[:1]
        if forced and not probe.consume_tokens(forced):
            return short_error(probe.get_error())
        if not forced and probe.is_error():
            return short_error(probe.get_error())
        return None

    @property
    def active(self) -> bool:
        return self.matcher is not None and self.error is None

    def allowed(self) -> np.ndarray | None:
        """Boolean mask over the model vocabulary, or None when nothing is constrained."""
        if not self.active:
            return None
        import llguidance.numpy as lnp
        lnp.fill_next_token_bitmask(self.matcher, self._mask, 0)
        bits = np.unpackbits(self._mask[0].view(np.uint8), bitorder="little").astype(bool)
        n = self.compiler.vocab_size
        out = np.zeros(n, dtype=bool)
        m = min(n, len(bits))
        out[:m] = bits[:m]
        if not out.any():
            self.error = f"the grammar allows no token here ({short_error(self.matcher.get_error()) or 'dead end'})"
            return None
        return out

    def accept(self, token: int, data: bytes) -> None:
        if self.error is not None:
            return
        if self.matcher is None:
            self.text += data
            i = self.text.find(self.trigger)
            if i < 0:
                return
            rest = self.text[i + len(self.trigger):]
            self.matcher = self._new_matcher()
            if rest:
                toks = self.compiler.lltokenizer().tokenize_bytes(rest)
                if not self.matcher.consume_tokens(toks):
                    self.error = f"the grammar rejects the text after its trigger: {short_error(self.matcher.get_error())}"
            return
        if not self.matcher.consume_token(token):
            self.error = f"the grammar rejected token {token}: {short_error(self.matcher.get_error())}"

    def done(self) -> bool:
        """True when the grammar has ended: nothing but EOS may follow."""
        return self.active and self.matcher.is_stopped() and not self.matcher.is_error()
