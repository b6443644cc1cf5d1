"""Residency monitor: periodic checks, one unhealthy transition, quiet when healthy.

Runs on trio's MockClock (`autojump_clock`): sleeps of minutes take no real time, and every
test is bounded with `fail_after` in *virtual* seconds plus pytest's faulthandler timeout.
"""

from __future__ import annotations

import io
import json

import pytest
import trio

from actors.residency import run_residency_monitor
from runtime.engine_api import ResidencyReport
from runtime.narration import Narrator

OK = ResidencyReport(ok=True, checked_bytes=4096, detail="4 arrays intact")


class FakeState:
    def __init__(self):
        self.reasons: list[str] = []

    def mark_unhealthy(self, reason: str) -> None:
        self.reasons.append(reason)


class ScriptedCheck:
    """Returns (or raises) the scripted outcomes in order, then repeats the last; records times."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.times: list[float] = []

    async def __call__(self) -> ResidencyReport:
        self.times.append(trio.current_time())
        await trio.sleep(0)  # a real check crosses to the executor thread and back
        outcome = self.outcomes[min(len(self.times) - 1, len(self.outcomes) - 1)]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def events(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


async def run_for(check, *, seconds: float, interval_s: float, min_level="info", **kw):
    """Run the monitor for `seconds` of virtual time; return (state, narration events)."""
    buf = io.StringIO()
    state = FakeState()
    narrator = Narrator("w-test", stream=buf, min_level=min_level)
    with trio.fail_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_residency_monitor(
                    check=check,
                    state=state,
                    narrator=narrator,
                    interval_s=interval_s,
                    task_status=task_status,
                    **kw,
                )
            )
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
    return state, events(buf)


async def test_checks_every_interval_and_logs_success_only_occasionally(autojump_clock):
    check = ScriptedCheck([OK])
    start = trio.current_time()
    state, log = await run_for(check, seconds=1000.5, interval_s=10, ok_log_every_s=300)

    offsets = [t - start for t in check.times]
    assert offsets == pytest.approx([10.0 * k for k in range(1, 101)])
    assert state.reasons == []
    oks = [e for e in log if e["action"] == "residency_ok"]
    # First check (t=10), then at t=310, 610, 910: four lines for a hundred checks.
    assert [e["check"] for e in oks] == [1, 31, 61, 91]
    assert all(e["level"] == "info" and e["actor"] == "residency" for e in oks)
    assert oks[0]["checked_bytes"] == 4096
    assert len(log) == 4


async def test_violation_marks_unhealthy_once_and_stays_unhealthy(autojump_clock):
    bad = ResidencyReport(ok=False, checked_bytes=4096, detail="blk.3.attn_q checksum changed")
    check = ScriptedCheck([OK, OK, bad, bad, OK, OK])
    state, log = await run_for(check, seconds=60.5, interval_s=5, min_level="debug")

    assert len(check.times) == 12  # it kept checking after the violation
    assert state.reasons == ["blk.3.attn_q checksum changed"]
    errors = [e for e in log if e["level"] == "error"]
    assert len(errors) == 1
    (err,) = errors
    assert err["action"] == "error"
    assert err["violation"] == "residency" and err["reason"] == "violation"
    assert err["check"] == 3
    assert "blk.3.attn_q checksum changed" in err["human"]
    assert err["worker_id"] == "w-test"
    # The later passing checks are noted (debug), never a return to healthy.
    after = [e["action"] for e in log if e["check"] > 3]
    assert after[0] == "residency_violation_persists"
    assert "residency_check_passed_after_violation" in after
    assert "residency_ok" not in after


async def test_a_check_that_raises_is_a_violation_and_the_monitor_survives(autojump_clock):
    check = ScriptedCheck([RuntimeError("context lost"), OK])
    state, log = await run_for(check, seconds=30.5, interval_s=10)

    assert len(check.times) == 3
    assert len(state.reasons) == 1
    assert "RuntimeError" in state.reasons[0] and "context lost" in state.reasons[0]
    (err,) = [e for e in log if e["level"] == "error"]
    assert err["action"] == "error"
    assert err["violation"] == "residency" and err["reason"] == "check_failed"
    assert err["checked_bytes"] == 0
    # Info level: the debug trail after the violation is filtered out, no false "ok" appears.
    assert [e["action"] for e in log] == ["error"]


class StuckCheck:
    """The executor never answers (a hung thread): the check waits forever."""

    def __init__(self):
        self.calls = 0

    async def __call__(self) -> ResidencyReport:
        self.calls += 1
        await trio.sleep_forever()


@pytest.mark.parametrize(
    ("interval_s", "timeout_s", "expected_timeout"), [(1, None, 5.0), (10, None, 30.0), (1, 2, 2.0)]
)
async def test_a_check_that_never_answers_makes_the_worker_unhealthy(
    autojump_clock, interval_s, timeout_s, expected_timeout
):
    check = StuckCheck()
    start = trio.current_time()
    marked_at = []

    class State(FakeState):
        def mark_unhealthy(self, reason: str) -> None:
            marked_at.append(trio.current_time() - start)
            super().mark_unhealthy(reason)

    buf = io.StringIO()
    state = State()
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_residency_monitor(
                    check=check,
                    state=state,
                    narrator=Narrator("w-test", stream=buf),
                    interval_s=interval_s,
                    check_timeout_s=timeout_s,
                    task_status=task_status,
                )
            )
            await trio.sleep(interval_s + expected_timeout + 0.5)
            nursery.cancel_scope.cancel()
    # One interval, then the whole timeout: unhealthy then, not before, not never.
    assert marked_at == [pytest.approx(interval_s + expected_timeout)]
    assert "executor unresponsive" in state.reasons[0]
    (err,) = [e for e in events(buf) if e["level"] == "error"]
    assert err["action"] == "error" and err["violation"] == "residency"
    assert err["reason"] == "unresponsive"
    assert check.calls == 1


async def test_a_wrong_return_type_is_a_violation(autojump_clock):
    async def check():
        return True  # e.g. someone returned report.ok instead of the report

    state, _ = await run_for(check, seconds=1.5, interval_s=1)
    assert len(state.reasons) == 1 and "ResidencyReport" in state.reasons[0]


async def test_started_is_signalled_before_the_first_check(autojump_clock):
    check = ScriptedCheck([OK])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_residency_monitor(
                    check=check,
                    state=FakeState(),
                    narrator=Narrator("w", stream=io.StringIO()),
                    interval_s=30,
                    task_status=task_status,
                )
            )
            assert check.times == []
            nursery.cancel_scope.cancel()


async def test_a_nonpositive_interval_is_refused():
    with trio.fail_after(5), pytest.raises(ValueError):
        await run_residency_monitor(
            check=ScriptedCheck([OK]),
            state=FakeState(),
            narrator=Narrator("w", stream=io.StringIO()),
            interval_s=0,
        )
