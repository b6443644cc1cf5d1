"""CUDA failures as the worker's errors: which ones lose the context, and guarding engine calls.

A "sticky" error (illegal address, a kernel's hardware exception, ECC, ...) poisons the context:
every later CUDA call fails too, and the process must exit. Others (a launch refused for its
configuration, an allocation that does not fit) leave the context usable. PyCUDA's exceptions
carry no status code, only a message, so the message is a hint, never the verdict: after any
CUDA error we probe the context (`Context.synchronize()`); if the probe fails too, the context
is lost, whatever the first error said.

`guard(...)` turns an engine call's CUDA errors into the worker's: an allocation failure into
`VramOom`, a sticky error into `CudaError(fatal=True)` (after `poison`), any other into
`CudaError`; `abort` (when given) drops the failed job's state first, and if that fails as well
the context is treated as lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from cuda.graph import GraphError
from cuda.ledger import AllocationFailed
from runtime.errors import CudaError, VramOom

#: CUresult codes after which the context is unusable: ECC uncorrectable (214), illegal
#: address (700), launch timeout (702), hardware stack error (714), illegal instruction (715),
#: misaligned address (716), invalid address space (717), invalid PC (718), launch failed
#: (719), unknown (999)
STICKY_STATUSES = frozenset({214, 700, 702, 714, 715, 716, 717, 718, 719, 999})
#: message fragments of the sticky errors, as the driver words them (a fast path only)
_STICKY_WORDS = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "hardware stack error",
    "invalid program counter",
    "uncorrectable ecc",
)


def context_lost(drv: Any, exc: BaseException) -> bool:
    """Whether the CUDA error `exc` left the current context unusable."""
    if isinstance(exc, drv.LaunchError):
        return True
    if getattr(exc, "status", None) in STICKY_STATUSES:  # GraphError carries the code
        return True
    if any(w in str(exc).lower() for w in _STICKY_WORDS):
        return True
    return not _context_works(drv)


def _context_works(drv: Any) -> bool:
    """Probe: a sticky error makes every later call fail, synchronize included."""
    try:
        drv.Context.synchronize()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def guard(
    drv: Any, *, poison: Callable[[str], None], abort: Callable[[], None] | None = None
) -> Iterator[None]:
    """Run the body; translate CUDA failures (see the module docstring)."""
    try:
        yield
    except (AllocationFailed, drv.MemoryError) as exc:
        _drop_job(abort, poison)
        raise VramOom(f"out of VRAM during the job: {exc}") from exc
    except (drv.Error, GraphError) as exc:
        if context_lost(drv, exc):
            poison(str(exc))
            raise CudaError(f"CUDA failure, context lost: {exc}", fatal=True) from exc
        _drop_job(abort, poison)
        raise CudaError(f"CUDA failure: {exc}") from exc


def _drop_job(abort: Callable[[], None] | None, poison: Callable[[str], None]) -> None:
    if abort is None:
        return
    try:
        abort()
    except Exception as exc:  # freeing or resetting failed: nothing can be trusted any more
        poison(f"dropping the failed job failed: {exc}")
        raise CudaError(f"CUDA failure while dropping the job: {exc}", fatal=True) from exc
