"""Admission and bookkeeping of jobs: the one place that says yes, 409, 503 BUSY, or 404.

Live jobs (queued or running) are indexed by job_id, so a duplicate is refused (409) and a
cancel finds its target. A job_id is *reserved* from the moment its request is valid, before its
prompt is tokenized off-thread (that takes a while for a long prompt): a duplicate arriving
meanwhile is a 409 too, and a cancel arriving meanwhile answers 202 and the job, once
submitted, ends at once with `error` CANCELLED, exactly like a job cancelled while queued. Finished job ids are remembered for a while (bounded) so that a cancel
after the end answers 202 and changes nothing, as the protocol wants, instead of 404.
Runs entirely on the trio thread.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs
import trio

from actors.executor import Executor
from actors.jobs import Job, JobEvent, JobHandle, JobState
from runtime.errors import ErrorCode, WorkerError
from runtime.narration import Narrator
from runtime.state import Status, WorkerState

ACTOR = "scheduler"
REMEMBER_FINISHED = 4096  # finished job ids kept for idempotent cancels
BUSY_RETRY_AFTER_S = 1


@attrs.define
class Reservation:
    """A job_id held while its prompt is tokenized; `cancel` may mark it."""

    job_id: str
    cancel_reason: str | None = None  # set: cancelled before it was submitted


class Scheduler:
    def __init__(
        self,
        *,
        executor: Executor,
        state: WorkerState,
        narrator: Narrator,
        on_event: Callable[[JobHandle, JobEvent], None] | None = None,
    ):
        self.executor = executor
        self._on_event = on_event  # sees every event of every job (the service's counters)
        self.state = state
        self.live: dict[str, JobHandle] = {}
        self.reserved: dict[str, Reservation] = {}
        self.finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._narrator = narrator.child(actor=ACTOR)

    def admission_error(self) -> WorkerError | None:
        """Why a new job would be refused right now by the worker's state (None: it would not)."""
        status = self.state.status
        if status is Status.LOADING:
            return WorkerError(
                f"the model is still loading ({self.state.load_percent} %)", code=ErrorCode.LOADING
            )
        if status is Status.DRAINING:
            return WorkerError("the worker is shutting down", code=ErrorCode.DRAINING)
        if status is Status.UNHEALTHY:
            return WorkerError(
                f"the worker is unhealthy: {self.state.reason}", code=ErrorCode.INTERNAL
            )
        return None

    def check_job_id(self, job_id: str) -> None:
        if job_id in self.live or job_id in self.reserved:
            raise WorkerError(f"job {job_id} is already queued or running", code=ErrorCode.CONFLICT)

    def check_room(self) -> None:
        if not self.executor.has_room():
            raise WorkerError(
                f"the queue is full ({self.executor.queue_size} jobs waiting)", code=ErrorCode.BUSY
            )

    def reserve(self, job_id: str) -> Reservation:
        """Hold `job_id` while the prompt is tokenized; refuses (409, 503 BUSY) before that work.

        Pair with `unreserve` in a `finally`; `submit(job, reservation)` takes it over.
        """
        self.check_job_id(job_id)
        self.check_room()
        reservation = Reservation(job_id)
        self.reserved[job_id] = reservation
        return reservation

    def unreserve(self, reservation: Reservation) -> None:
        if self.reserved.get(reservation.job_id) is reservation:
            del self.reserved[reservation.job_id]

    def submit(self, job: Job, reservation: Reservation | None = None) -> JobHandle:
        """Admit a job or raise: LOADING/DRAINING/INTERNAL (state), CONFLICT, BUSY."""
        error = self.admission_error()
        if error is not None:
            raise error
        if reservation is not None:
            self.unreserve(reservation)
        self.check_job_id(job.job_id)
        if reservation is not None and reservation.cancel_reason is not None:
            # Cancelled while its prompt was tokenized: it ends now and never queues.
            handle = self._handle(job)
            self.live[job.job_id] = handle
            handle.request_cancel(reservation.cancel_reason)
            return handle
        self.check_room()
        handle = self._handle(job)
        try:
            self.executor.submit(handle)
        except trio.WouldBlock:  # control commands took the slack: as full as it gets
            raise WorkerError("the queue is full", code=ErrorCode.BUSY) from None
        self.live[job.job_id] = handle
        self.finished.pop(job.job_id, None)
        return handle

    def _handle(self, job: Job) -> JobHandle:
        return JobHandle(job, on_done=self._retire, on_event=self._on_event)

    def cancel(self, job_id: str, *, correlation_id: str | None = None) -> bool:
        """POST /cancel: True (202) for a live or recently finished job, False (404) otherwise."""
        handle = self.live.get(job_id)
        if handle is None:
            reservation = self.reserved.get(job_id)
            if reservation is None:
                return job_id in self.finished
            if reservation.cancel_reason is None:
                reservation.cancel_reason = "the job was cancelled"
                self._narrator.emit(
                    "cancel",
                    target=job_id,
                    job_id=job_id,
                    correlation_id=correlation_id,
                    human=f"Cancel requested for job {job_id} before it was queued.",
                    job_state="admitting",
                )
            return True
        was_queued = handle.state is JobState.QUEUED
        if handle.request_cancel() and not handle.cancel_noted:
            handle.cancel_noted = True
            self._narrator.emit(
                "cancel",
                target=job_id,
                job_id=job_id,
                correlation_id=correlation_id or handle.job.correlation_id,
                human=f"Cancel requested for {'queued' if was_queued else 'running'} job {job_id}.",
                job_state="queued" if was_queued else "running",
            )
        return True

    def cancel_all(self, reason: str) -> int:
        """Draining or crashing: every live job gets a terminal CANCELLED (queued: at once)."""
        handles = list(self.live.values())
        for handle in handles:
            handle.request_cancel(reason)
        return len(handles)

    def _retire(self, handle: JobHandle) -> None:
        self.executor.release(handle)  # a queued job that ended frees its queue slot now
        if self.live.get(handle.job_id) is handle:
            del self.live[handle.job_id]
        self.finished[handle.job_id] = None
        while len(self.finished) > REMEMBER_FINISHED:
            self.finished.popitem(last=False)
