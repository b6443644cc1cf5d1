"""Residency monitor actor: every `interval_s`, ask the engine whether the model is still in place.

`check` is an async callable returning a `ResidencyReport`; the supervisor makes it run
`engine.check_residency()` on the executor thread (the only thread that may touch the engine),
so a check waits behind a running decode step rather than racing it.

A violation (a report with `ok=False`, or `check` raising) marks the worker unhealthy once and
narrates an `error` event. The monitor keeps checking afterwards, but the worker **stays
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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run forever (until cancelled). The first check happens one interval after start.

    Why not at once: the supervisor starts this actor right after the loader finished, which
    itself verified what it placed; the first interval is the first time anything could move.
    """
    if interval_s <= 0:
        raise ValueError(f"residency interval must be positive, got {interval_s}")
    narrator = narrator.child(actor=ACTOR)
    task_status.started()

    checks = 0
    violated = False  # once true, never false again: see the module docstring
    last_ok_logged_at: float | None = None
    while True:
        await trio.sleep(interval_s)
        checks += 1
        report, failure = await _run_check(check)

        if failure is not None:
            if not violated:
                violated = True
                state.mark_unhealthy(failure)
                narrator.emit(
                    "residency_violation",
                    level="error",
                    target="model",
                    human=f"Residency check failed; the worker is now unhealthy: {failure}",
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


async def _run_check(
    check: Callable[[], Awaitable[ResidencyReport]],
) -> tuple[ResidencyReport | None, str | None]:
    """(report, None) when resident; (report or None, reason) on a violation or a failed check."""
    try:
        report = await check()
    except Exception as exc:  # a check that cannot run is a check that did not pass
        return None, f"the check itself failed: {type(exc).__name__}: {exc}"
    if not isinstance(report, ResidencyReport):
        return None, f"the check returned {type(report).__name__}, not a ResidencyReport"
    if not report.ok:
        return report, report.detail or "residency check reported a violation"
    return report, None
