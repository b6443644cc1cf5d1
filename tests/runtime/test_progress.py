"""ProgressReporter: 0 first, never backwards, `total` exactly once and last."""

from __future__ import annotations

import pytest

from runtime.progress import ProgressReporter


def record() -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_contract(calls: list[tuple[int, int]], total: int) -> None:
    dones = [d for d, _ in calls]
    assert dones[0] == 0
    assert all(t == total for _, t in calls)
    assert dones == sorted(dones)
    assert dones.count(total) == 1 and dones[-1] == total


def test_normal_load():
    calls, cb = record()
    p = ProgressReporter(100, cb)
    for _ in range(4):
        p.advance(25)
    p.finish()
    assert calls == [(0, 100), (25, 100), (50, 100), (75, 100), (99, 100), (100, 100)]
    assert_contract(calls, 100)


def test_overshoot_and_double_finish_report_total_once():
    calls, cb = record()
    p = ProgressReporter(10, cb)
    p.advance(7)
    p.advance(50)  # an estimate that overshoots is held short of the end
    p.advance(3)
    p.finish()
    p.finish()
    p.advance(5)  # after finish: nothing more
    assert_contract(calls, 10)
    assert calls[-1] == (10, 10) and len(calls) == 4
    assert p.finished and p.done == 10


def test_zero_advances_emit_nothing_and_finish_without_advance():
    calls, cb = record()
    p = ProgressReporter(1000, cb)
    p.advance(0)
    p.finish()
    assert calls == [(0, 1000), (1000, 1000)]


def test_empty_total_reports_once():
    calls, cb = record()
    p = ProgressReporter(0, cb)
    p.finish()
    assert calls == [(0, 0)]


def test_no_callback_and_bad_arguments():
    p = ProgressReporter(5, None)
    p.advance(2)
    p.finish()
    assert p.done == 5
    with pytest.raises(ValueError):
        ProgressReporter(-1, None)
    with pytest.raises(ValueError):
        ProgressReporter(5, None).advance(-1)
