"""DRY ("don't repeat yourself"): penalise tokens that would extend a repetition.

A token that would continue a sequence already seen earlier in the window, once that
sequence is at least `allowed_length` tokens long, gets its logit lowered by
`multiplier * base ** (length - allowed_length)`.  Repetitions never reach back across a
sequence breaker (newline, colon, quote, asterisk by default), and a breaker token itself
is never penalised.  Semantics and defaults are llama.cpp's; the repeat lengths come from
a Z-array over the reversed window, so one call is linear in the window.

A breaker is matched when one token's text contains it whole; a breaker string split
over several tokens is not recognised (the default breakers are single characters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_LOG_FLOAT_MAX = 88.7228391  # ln(float32 max): base ** exponent must stay finite


def z_array(s: Sequence[int]) -> list[int]:
    """z[k] = length of the longest common prefix of s and s[k:] (z[0] = len(s))."""
    n = len(s)
    z = [0] * n
    if n:
        z[0] = n
    lo = hi = 0  # [lo, hi) is the rightmost window known to match a prefix of s
    for k in range(1, n):
        length = min(hi - k, z[k - lo]) if k < hi else 0
        while k + length < n and s[length] == s[k + length]:
            length += 1
        z[k] = length
        if k + length > hi:
            lo, hi = k, k + length
    return z


def dry_penalties(history: Sequence[int], multiplier: float, base: float, allowed_length: int,
                  last_n: int, breakers: frozenset[int]) -> dict[int, float]:
    """{token id: amount to subtract from its logit} for the next token after `history`.

    `last_n`: how many recent tokens to scan (-1: all of `history`, 0: DRY off).
    """
    if multiplier == 0.0 or base < 1.0 or last_n == 0:
        return {}
    window = list(history if last_n < 0 else history[-last_n:])
    n = len(window)
    if n <= allowed_length:
        return {}
    # A repetition may only reach back to the most recent breaker.
    limit = n
    for i in range(n):
        if window[n - 1 - i] in breakers:
            limit = i
            break
    if limit < allowed_length:
        return {}
    z = z_array(window[::-1])
    longest: dict[int, int] = {}
    for k in range(1, n):
        # window[:n-k] ends with the same `length` tokens as the whole window, so emitting
        # window[n-k] (the token that followed them back then) would repeat one more.
        length = min(z[k], limit)
        if length >= allowed_length:
            token = window[n - k]
            if length > longest.get(token, -1):
                longest[token] = length
    max_exponent = int(_LOG_FLOAT_MAX / math.log(base)) if base > 1.000001 else 0
    out = {}
    for token, length in longest.items():
        if token in breakers:
            continue
        exponent = length - allowed_length
        if max_exponent > 0:
            exponent = min(exponent, max_exponent)
        out[token] = multiplier * base ** exponent
    return out
