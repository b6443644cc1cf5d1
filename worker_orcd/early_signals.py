"""Shutdown signals that arrive while the process is still starting (REL-9).

`worker-orcd` imports for a second or more before trio runs and `boot.watch_signals` opens its
receiver; a SIGTERM in that window used to kill the process with -15 and no log line (an
orchestrator that stops a pod right after starting it). `install()` runs first thing in
`worker_orcd.cli.main`, before the heavy imports, and only records the signals; the watcher
takes them (`take()`) as soon as it is listening and handles them as if they had just come: a
narrated shutdown request and a clean exit 0.
"""

from __future__ import annotations

import signal

#: The signals that ask the worker to drain and stop (SIGHUP too: a worker has no
#: configuration to reload, and a closed terminal should not kill it without a drain).
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_pending: list[int] = []


def _record(signum: int, _frame) -> None:
    _pending.append(signum)


def install() -> None:
    """Record shutdown signals from now until the watcher takes over (main thread only)."""
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, _record)


def take() -> list[int]:
    """The signals recorded so far, oldest first; forgets them."""
    taken = list(_pending)
    del _pending[: len(taken)]
    return taken
