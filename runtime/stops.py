"""Stop strings, matched on decoded text across token boundaries.

Text arrives in pieces (one per token, from the incremental decoder). A stop string may straddle
pieces, so the matcher holds back any tail of the text that could still grow into a stop string,
and releases it as soon as it cannot. When a stop string appears, the text before it is released
and everything from the match on is dropped: the client never sees any part of a stop string.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class StopResult:
    text: str  # text safe to emit now (may be empty)
    stopped: bool  # a stop string was found; nothing more may be emitted


class StopMatcher:
    """Feed decoded pieces with `push`; emit what it returns; call `flush` at the end."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)  # the empty string would match everywhere
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def push(self, piece: str) -> StopResult:
        if self._stopped:
            return StopResult("", True)
        buf = self._held + piece
        if not self.stops:
            self._held = ""
            return StopResult(buf, False)
        # The earliest match wins (the text after it is dropped whatever it holds). `buf` cannot
        # hold a match that starts in text already released: that text was released only
        # because no stop string could start there.
        first = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            self._stopped = True
            return StopResult(buf[:first], True)
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return StopResult(buf[: len(buf) - keep], False)

    def flush(self) -> str:
        """End of generation without a match: the held-back tail is ordinary text after all."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
