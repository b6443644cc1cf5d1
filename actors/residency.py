"""Residency monitor actor: every `interval_s`, ask the engine whether the model is still in place.

`check` is an async callable returning a `ResidencyReport`; the supervisor makes it run
`engine.check_residency()` on the executor thread (the only thread that may touch the engine),
so a check waits behind a running decode step rather than racing it.

A violation (a report with `ok=False`, `check` raising, or `check` not answering within
`check_timeout_s`: a stuck executor) marks the worker unhealthy once and narrates an `error`
event (level error, `violation="residency"`, plus `reason`: "violation" | "check_failed" |
"unresponsive"). The monitor keeps checking afterwards, but the worker **stays
unhealthy even if a later check passes**: memory that moved or changed once cannot be trusted
again (a page that was evicted and faulted back, or a weight that was overwritten and happens to
checksum right on the sample we look at, is not "repaired"). Only a restart, which reloads the
model, makes the worker healthy again.

Successful checks are narrated rarely (the first one, then at most once per `ok_log_every_s`)
so a healthy worker does not fill its log with "still fine".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from runtime.engine_api import ResidencyReport
from runtime.narration import Narrator

ACTOR = "residency"
MIN_CHECK_TIMEOUT_S = 5.0


class HealthState(Protocol):
    def mark_unhealthy(self, reason: str) -> None:
        """Status becomes `unhealthy`, `resident` false; later calls may be ignored."""


async def run_residency_monitor(
    *,
    check: Callable[[], Awaitable[ResidencyReport]],
    state: HealthState,
    narrator: Narrator,
    interval_s: float,
    ok_log_every_s: float = 300.0,
    check_timeout_s: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run forever (until cancelled). The first check happens one interval after start.

    Why not at once: the supervisor starts this actor right after the loader finished, which
    itself verified what it placed; the first interval is the first time anything could move.

    `check_timeout_s` (default `default_check_timeout(interval_s)`) bounds each check: the
    executor answers between decode steps, so a check that takes longer means the executor
    thread is stuck, and a worker that cannot run a job must not stay `ready`.
    """
    if interval_s <= 0:
        raise ValueError(f"residency interval must be positive, got {interval_s}")
    if check_timeout_s is None:
        check_timeout_s = default_check_timeout(interval_s)
    if check_timeout_s <= 0:
        raise ValueError(f"residency check timeout must be positive, got {check_timeout_s}")
    narrator = narrator.child(actor=ACTOR)
    task_status.started()

    checks = 0
    violated = False  # once true, never false again: see the module docstring
    last_ok_logged_at: float | None = None
    while True:
        await trio.sleep(interval_s)
        checks += 1
        report, failure, reason = await _run_check(check, check_timeout_s)

        if failure is not None:
            if not violated:
                violated = True
                state.mark_unhealthy(failure)
                narrator.emit(
                    "error",
                    level="error",
                    target="model",
                    human=f"Residency check failed; the worker is now unhealthy: {failure}",
                    violation="residency",
                    reason=reason,
                    check=checks,
                    checked_bytes=report.checked_bytes if report is not None else 0,
                    detail=failure,
                )
            else:
                # Already unhealthy: keep the trail visible but quiet.
                narrator.emit(
                    "residency_violation_persists",
                    level="debug",
                    target="model",
                    human=f"Residency still violated: {failure}",
                    check=checks,
                )
            continue

        assert report is not None
        now = trio.current_time()
        if violated:
            narrator.emit(
                "residency_check_passed_after_violation",
                level="debug",
                target="model",
                human="A residency check passed, but the worker stays unhealthy until restarted.",
                check=checks,
                checked_bytes=report.checked_bytes,
            )
        elif last_ok_logged_at is None or now - last_ok_logged_at >= ok_log_every_s:
            last_ok_logged_at = now
            narrator.emit(
                "residency_ok",
                level="info",
                target="model",
                human=f"Model memory is resident and intact ({report.checked_bytes} bytes checked).",
                check=checks,
                checked_bytes=report.checked_bytes,
                detail=report.detail,
            )


def default_check_timeout(interval_s: float) -> float:
    """How long one check may take before the executor counts as stuck: max(5 s, 3 intervals)."""
    return max(MIN_CHECK_TIMEOUT_S, 3 * interval_s)


async def _run_check(
    check: Callable[[], Awaitable[ResidencyReport]], timeout_s: float
) -> tuple[ResidencyReport | None, str | None, str | None]:
    """(report, None, None) when resident; else (report or None, failure text, reason)."""
    try:
        with trio.move_on_after(timeout_s) as scope:
            report = await check()
    except Exception as exc:  # a check that cannot run is a check that did not pass
        return None, f"the check itself failed: {type(exc).__name__}: {exc}", "check_failed"
    if scope.cancelled_caught:
        failure = f"executor unresponsive: no residency check answer within {timeout_s:g} s"
        return None, failure, "unresponsive"
    if not isinstance(report, ResidencyReport):
        failure = f"the check returned {type(report).__name__}, not a ResidencyReport"
        return None, failure, "check_failed"
    if not report.ok:
        return report, report.detail or "residency check reported a violation", "violation"
    return report, None, None
