"""Byte-counted load progress with the guarantees /health and the narration rely on.

`callback(done, total)` is called with 0 first, then with non-decreasing values, and with `total`
exactly once, at the end, whatever the loader does: overshooting `advance` calls are clamped
(held one byte short of the end until `finish`), and a second `finish` is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]


class ProgressReporter:
    def __init__(self, total_bytes: int, callback: ProgressCallback | None):
        if total_bytes < 0:
            raise ValueError(f"total_bytes must be >= 0, got {total_bytes}")
        self.total = int(total_bytes)
        self._callback = callback
        self._done = 0
        # with nothing to load, the first report (0 of 0) is also the last
        self._finished = self.total == 0
        self._emit(0)

    @property
    def done(self) -> int:
        return self._done

    @property
    def finished(self) -> bool:
        return self._finished

    def _emit(self, value: int) -> None:
        if self._callback is not None:
            self._callback(value, self.total)

    def advance(self, nbytes: int) -> None:
        """Count `nbytes` more as loaded. Never reports `total`: only `finish` does."""
        if nbytes < 0:
            raise ValueError(f"progress cannot go backwards (advance by {nbytes})")
        if self._finished or nbytes == 0:
            return
        # the final value belongs to finish(), so an estimate that overshoots stops short of it
        value = min(self._done + int(nbytes), max(self.total - 1, 0))
        if value > self._done:
            self._done = value
            self._emit(value)

    def finish(self) -> None:
        """Report `total` (once). Safe to call again; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        self._done = self.total
        self._emit(self.total)
