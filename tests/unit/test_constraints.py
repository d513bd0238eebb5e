"""llguidance constraints with the stories260K tokenizer and the fake backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from engine_helpers import RecordingBackend, make_engine, run, text_of, tokenizer

from refserver import errors
from refserver.engine.constraints import ConstraintCompiler
from refserver.engine.types import Constraint, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.feature("structured_output"), pytest.mark.needs_shared, pytest.mark.profile("refserver")]


@pytest.fixture(scope="module")
def compiler():
    return ConstraintCompiler(tokenizer(), 512)


def drive(state, rng_seed=0, steps=40) -> str:
    """Pick random allowed tokens until the grammar is done; returns the text."""
    tok = tokenizer()
    rng = np.random.default_rng(rng_seed)
    out = b""
    for _ in range(steps):
        allowed = state.allowed()
        ids = np.flatnonzero(allowed) if allowed is not None else np.arange(512)
        ids = [i for i in ids if i not in tok.eog_ids] or list(ids)
        t = int(rng.choice(ids))
        if t in tok.eog_ids:
            break
        state.accept(t, tok.token_bytes(t))
        out += tok.token_bytes(t)
        if state.done():
            break
    return out.decode()


def test_json_const_mask_admits_42(compiler):
    st = compiler.compile(Constraint("json_schema", json.dumps({"const": "42"})))
    tok = tokenizer()
    allowed = st.allowed()
    first = [i for i in np.flatnonzero(allowed)]
    assert all(tok.token_bytes(i).decode(errors="replace").startswith('"') for i in first)
    assert drive(st) == '"42"' and st.done()


def test_gbnf_repeat(compiler):
    st = compiler.compile(Constraint("gbnf", 'root ::= "a"{5,5}'))
    assert drive(st, 1) == "aaaaa" and st.done()


def test_regex_and_lark(compiler):
    assert drive(compiler.compile(Constraint("regex", "(yes|no)")), 2) in ("yes", "no")
    assert drive(compiler.compile(Constraint("lark", 'start: "cat" | "dog"')), 3) in ("cat", "dog")


def test_bad_grammar_is_invalid_request(compiler):
    with pytest.raises(errors.InvalidRequest):
        compiler.compile(Constraint("gbnf", "root ::= undefined_rule"))
    with pytest.raises(errors.InvalidRequest):
        compiler.compile(Constraint("json_schema", "{not json"))


def test_lazy_trigger_starts_the_grammar_after_the_trigger(compiler):
    st = compiler.compile(Constraint("regex", "[0-9]{3}", lazy_trigger="call:"))
    tok = tokenizer()
    assert st.allowed() is None
    for t in tok.encode("we call:")[1:]:
        st.accept(t, tok.token_bytes(t))
    assert st.allowed() is not None
    assert len(drive(st, 4)) == 3 and st.done()


def test_engine_finishes_with_eos_on_a_constrained_request():
    eng = make_engine(RecordingBackend(512, 2048), n_slots=2)
    with pytest.raises(errors.InvalidRequest):
        eng.submit(GenerationRequest([1, 5], constraint=Constraint("gbnf", "root ::= (")), lambda e: None)
    for sp in (SamplingParams(temperature=0.0), SamplingParams(seed=4, temperature=1.0, ignore_eos=True)):
        ev = run(eng, GenerationRequest([1, 403], sp, n_predict=30,
                                        constraint=Constraint("json_schema", '{"const": "42"}')))
        assert text_of(ev) == '"42"' and ev[-1].stop_type == "eos"
        ev = run(eng, GenerationRequest([1, 403], sp, n_predict=30, constraint=Constraint("gbnf", 'root ::= "a"{5,5}')))
        assert text_of(ev) == "aaaaa" and ev[-1].stop_type == "eos"
    eng.shutdown()


def test_a_rejected_token_is_an_error_not_a_silent_drop():
    """Constraints never fail open (CONTRACT §9.11): a token the grammar rejects sets an
    error that the engine turns into a failed request."""
    from refserver.engine.constraints import ConstraintState

    state = ConstraintState.__new__(ConstraintState)
    state.error = None
    state.trigger = None

    class Matcher:
        def consume_token(self, token):
            return False

        def get_error(self):
            return "token not allowed"

    state.matcher = Matcher()
    state.accept(7, b"x")
    assert state.error is not None and "token not allowed" in state.error
    assert not state.active


@pytest.mark.parametrize("gbnf,expected", [
    (r'root ::= "caf\u00e9"', 'root ::= "café"'),
    (r'root ::= [\u0394] "!"', 'root ::= [Δ] "!"'),
    (r'root ::= "\u0041"', r'root ::= "\x41"'),
    (r'root ::= "\U0001F600"', 'root ::= "😀"'),
    (r'root ::= "\\u0041"', r'root ::= "\\u0041"'),  # an escaped backslash, not an escape
])
def test_gbnf_unicode_escapes_are_rewritten_for_llguidance(gbnf, expected):
    from refserver.engine.constraints import _unicode_escapes_to_chars
    assert _unicode_escapes_to_chars(gbnf) == expected
