"""The real worker, except that its engine crashes at the first decode step of every job.

(The load-time probe's one decode step, runtime.model_checks, is let through: the crash must
happen in a job, where client text is in play.)

    python tests/e2e/crashing_worker.py [worker-orcd flags]

The crash is an engine bug whose exception message quotes client text (the value of
`WORKER_ORCD_TEST_CANARY`): the worst case for W-1902, since the crash report that follows
carries that message. Everything else is `worker-orcd` as shipped: the cpu engine is wrapped
through the engine registry, the same way the entry points register the CUDA one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime.backends import engine_loader, register_engine  # noqa: E402
from worker_orcd import engines  # noqa: E402
from worker_orcd.cli import main  # noqa: E402

CANARY = os.environ.get("WORKER_ORCD_TEST_CANARY", "")


class CrashingEngine:
    """Delegates to the real engine; `decode` raises, quoting the canary."""

    def __init__(self, engine):
        self._engine = engine
        self._probe_step_left = True  # the load probe's step, before any job

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def decode(self, slots, tokens) -> None:
        if self._probe_step_left:
            self._probe_step_left = False
            return self._engine.decode(slots, tokens)
        raise RuntimeError(f"decode step failed while continuing {CANARY!r}")


def crashing(real):
    return lambda gguf, **kwargs: CrashingEngine(real(gguf, **kwargs))


engines.register()
for name in ("cpu", "cuda"):
    register_engine(name, crashing(engine_loader(name)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
