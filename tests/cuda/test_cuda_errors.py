"""cuda.errors without a GPU: the classification and the guard's bookkeeping.

The driver here is a stand-in with PyCUDA's exception hierarchy (MemoryError and LaunchError
derive from Error) and a `Context.synchronize` that fails while the "context" is poisoned, as a
real one does after a sticky error. What the real driver raises is covered by the GPU tests
(tests/cuda/test_oom.py).
"""

from __future__ import annotations

import types

import pytest

from cuda import errors
from cuda.graph import GraphError
from cuda.ledger import AllocationFailed
from runtime.errors import CudaError, VramOom


def _driver(*, sticky: bool):
    class Error(Exception):
        pass

    class MemoryError(Error):  # noqa: A001 - PyCUDA's name
        pass

    class LaunchError(Error):
        pass

    def synchronize() -> None:
        if state.sticky:
            raise Error("cuCtxSynchronize failed: an illegal memory access was encountered")

    state = types.SimpleNamespace(sticky=sticky)
    context = types.SimpleNamespace(synchronize=synchronize)
    return types.SimpleNamespace(
        Error=Error, MemoryError=MemoryError, LaunchError=LaunchError, Context=context, state=state
    )


class _Engine:
    def __init__(self, fail_abort: bool = False):
        self.poisoned: str | None = None
        self.aborted = 0
        self.fail_abort = fail_abort

    def poison(self, why: str) -> None:
        self.poisoned = why

    def abort(self) -> None:
        self.aborted += 1
        if self.fail_abort:
            raise RuntimeError("cuMemFree failed: unknown error")


@pytest.mark.parametrize("status", sorted(errors.STICKY_STATUSES))
def test_sticky_statuses_are_fatal_without_probing(status):
    drv = _driver(sticky=False)  # the probe would say "fine": the status alone decides
    exc = GraphError.__new__(GraphError)  # its __init__ asks libcuda for the message
    RuntimeError.__init__(exc, f"cuGraphLaunch failed: CUDA error {status}")
    exc.status = status
    assert errors.context_lost(drv, exc)


def test_a_vague_message_is_decided_by_the_probe():
    exc_text = "cuLaunchKernel failed: unknown error"  # no sticky word in it
    assert errors.context_lost(_driver(sticky=True), _driver(sticky=True).Error(exc_text))
    assert not errors.context_lost(_driver(sticky=False), _driver(sticky=False).Error(exc_text))
    # a refused launch (not sticky) mentioning an exception is not fatal by wording
    drv = _driver(sticky=False)
    assert not errors.context_lost(drv, drv.Error("launch out of resources (exception: ...)"))
    assert errors.context_lost(drv, drv.LaunchError("anything"))


def test_non_fatal_error_drops_the_job_and_keeps_the_context():
    drv, eng = _driver(sticky=False), _Engine()
    guard = errors.guard(drv, poison=eng.poison, abort=eng.abort)
    with pytest.raises(CudaError) as info, guard:
        raise drv.Error("cuLaunchKernel failed: too many resources requested for launch")
    assert not info.value.fatal and eng.aborted == 1 and eng.poisoned is None


def test_sticky_error_poisons_and_does_not_drop_the_job():
    drv, eng = _driver(sticky=True), _Engine()
    guard = errors.guard(drv, poison=eng.poison, abort=eng.abort)
    with pytest.raises(CudaError) as info, guard:
        raise drv.Error("cuMemcpyDtoH failed: unknown error")
    assert info.value.fatal and eng.poisoned and eng.aborted == 0


def test_allocation_failure_is_vram_oom_and_drops_the_job():
    drv, eng = _driver(sticky=False), _Engine()
    for exc in (AllocationFailed("cap"), drv.MemoryError("cuMemAlloc failed: out of memory")):
        with pytest.raises(VramOom), errors.guard(drv, poison=eng.poison, abort=eng.abort):
            raise exc
    assert eng.aborted == 2 and eng.poisoned is None


def test_failing_to_drop_the_job_is_fatal():
    drv, eng = _driver(sticky=False), _Engine(fail_abort=True)
    guard = errors.guard(drv, poison=eng.poison, abort=eng.abort)
    with pytest.raises(CudaError) as info, guard:
        raise drv.Error("cuLaunchKernel failed: invalid argument")
    assert info.value.fatal and eng.poisoned


def test_without_abort_nothing_is_dropped():
    # check_residency's guard: a failed check never touches the job
    drv, eng = _driver(sticky=False), _Engine()
    with pytest.raises(CudaError) as info, errors.guard(drv, poison=eng.poison):
        raise drv.Error("cuMemcpyDtoH failed: invalid argument")
    assert not info.value.fatal and eng.aborted == 0 and eng.poisoned is None


def test_other_exceptions_pass_through_untouched():
    drv, eng = _driver(sticky=False), _Engine()
    with pytest.raises(KeyError), errors.guard(drv, poison=eng.poison, abort=eng.abort):
        raise KeyError("not CUDA")
    assert eng.aborted == 0
