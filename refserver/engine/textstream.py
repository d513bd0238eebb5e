"""Turns generated token bytes into text that is safe to show now.

Tokens are assembled as BYTES (a token may carry half of a UTF-8 character), so a
partial UTF-8 sequence is never emitted.  Text whose tail could still grow into a stop
string is held back; when a stop string appears, it and everything after it are
dropped.  `TextStream.push` returns what may be released and the matched stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


def _incomplete_tail(data: bytes) -> int:
    """How many trailing bytes form the start of a UTF-8 sequence that is not complete."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self._bytes = b""  # undecoded tail (incomplete UTF-8)
        self._held = ""  # decoded text not yet released
        self.stopped_by: str | None = None

    def push(self, data: bytes) -> tuple[str, str | None]:
        """Add a token's bytes; returns (text to release now, stop string if one matched)."""
        if self.stopped_by is not None:
            return "", self.stopped_by
        if not self.stops and not self._bytes and not self._held and data and data[-1] < 0x80:
            return data.decode("utf-8", errors="replace"), None  # the common case, per token
        buf = self._bytes + data
        cut = len(buf) - _incomplete_tail(buf)
        self._bytes = buf[cut:]
        self._held += buf[:cut].decode("utf-8", errors="replace")
        if not self.stops:
            out, self._held = self._held, ""
            return out, None
        hit = None
        for s in self.stops:
            i = self._held.find(s)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is not None:
            out = self._held[: hit[0]]
            self._held, self._bytes = "", b""
            self.stopped_by = hit[1]
            return out, hit[1]
        keep = partial_stop_len(self._held, self.stops)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out):]
        return out, None

    def flush(self) -> str:
        """Release everything held (generation ended for another reason than a stop string)."""
        if self.stopped_by is not None:
            return ""
        out = self._held + self._bytes.decode("utf-8", errors="replace")
        self._held, self._bytes = "", b""
        return out
