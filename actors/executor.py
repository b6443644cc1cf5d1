"""The executor actor: one OS thread owns the engine for the whole life of the process.

`run()` is one long `trio.to_thread.run_sync` call (never `abandon_on_cancel`: a thread that
still drives the GPU must not be forgotten). The thread loads the model, then runs the one step
loop: it admits queued jobs into free sequence slots (`--max-batch`), retires cancelled ones,
and runs one `runtime.batcher.Batcher` step (a prefill chunk, the batch's samples, one batched
decode), forwarding every token the moment it is sampled. It answers residency checks between
steps, and closes the engine in `finally`. Nothing else ever touches the engine.

Trio -> thread: one bounded memory channel of commands (load, job, wake, stop), received with
`trio.from_thread.run` (blocking only when no sequence runs). Thread -> trio: fire-and-forget
callbacks through the trio token (`run_sync_soon`), so the step loop never waits for the event
loop to forward a token. Cancellation is a flag on each job the loop reads before every step: a
cancelled job gets its terminal event and frees its slot before the next step runs; the others
go on untouched. See specs/decisions/0026-batch-slots-step-loop.md.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
from collections.abc import Callable
from typing import Any

import attrs
import trio

from actors import job_log
from actors.jobs import End, Failed, JobHandle, Started, Token
from runtime.batcher import Batcher
from runtime.engine_api import Engine, ProgressCallback, ResidencyReport
from runtime.errors import Cancelled, ErrorCode, WorkerError
from runtime.narration import Narrator
from runtime.sequence import Finished, Sequence, TokenOut

ACTOR = "executor"
CONTROL_SLACK = 4  # channel slots beyond the job queue: load, stop, one wake per pending check
_STOP = object()
_WAKE = object()
_SHUTDOWN = "the worker is shutting down"


@attrs.frozen
class EngineFacts:
    """What the trio side may know about the engine, read once on the executor thread."""

    backend: str
    quant_kind: str
    memory_bytes: int
    max_context: int  # KV-cache tokens of one sequence slot
    max_batch: int  # sequence slots


@attrs.define
class _Load:
    load: Callable[[ProgressCallback], Engine]
    progress: ProgressCallback  # runs on the trio thread
    done: trio.Event = attrs.field(factory=trio.Event)
    facts: EngineFacts | None = None
    error: BaseException | None = None


@attrs.define
class _Check:
    done: trio.Event = attrs.field(factory=trio.Event)
    report: ResidencyReport | None = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Running:
    """A job on the engine: the tag of its `runtime.sequence.Sequence`."""

    handle: JobHandle
    narrator: Narrator
    output: list[str] = attrs.field(factory=list)  # for execute_end's fingerprint


def _utc_now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Executor:
    def __init__(self, *, narrator: Narrator, queue_size: int, tokenizer: Any = None):
        self.queue_size = queue_size
        # Queue occupancy: jobs sent, not yet taken by the thread and not yet finished. A queued
        # job that ends early (cancelled, client gone) frees its slot at once (`release`), even
        # though its handle still sits in the channel until the thread skips over it.
        self.pending = 0
        self._counted: set[JobHandle] = set()  # the jobs `pending` counts
        self.tokenizer = tokenizer  # set by the loader before the first job
        # Room for the queue, as many already-finished handles waiting to be skipped, and the
        # control commands; `submit` never uses the control slots.
        self._job_slots = 2 * queue_size
        self._send, self._receive = trio.open_memory_channel[object](
            self._job_slots + CONTROL_SLACK
        )
        self._checks: collections.deque[_Check] = collections.deque()
        self._stopping = False  # read by the thread between steps: finish the job now
        self._wake_pending = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._narrator = narrator.child(actor=ACTOR)
        self._engine: Engine | None = None  # touched only on the executor thread
        self._batcher: Batcher | None = None  # likewise; made once the engine is loaded
        # written by the thread between steps, read by the trio side (stats, /health)
        self.running = 0  # sequences on the engine
        self.kv_tokens = 0  # tokens in their KV caches
        self._finished = trio.Event()  # the thread has returned: the engine is closed

    # ------------------------------------------------------------------ trio side

    async def run(
        self, *, task_status: trio.TaskStatus[Executor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor: returns after `stop()`; an engine bug propagates (the worker then exits)."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                await trio.to_thread.run_sync(self._thread_main, task_status.started)
                nursery.cancel_scope.cancel()
        finally:
            self._finished.set()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stopping = True  # the thread ends its job at the next step, then sees Cancelled

    def has_room(self) -> bool:
        return self.pending < self.queue_size

    def submit(self, handle: JobHandle) -> None:
        """Queue a job (the caller checked `has_room`); FIFO, one at a time.

        Raises `trio.WouldBlock` when the channel is clogged with finished handles the busy
        thread has not skipped yet (the caller answers BUSY): the control slots stay free.
        """
        if self._send.statistics().current_buffer_used >= self._job_slots:
            raise trio.WouldBlock
        self._send.send_nowait(handle)
        self._counted.add(handle)
        self.pending += 1

    def release(self, handle: JobHandle) -> None:
        """The job no longer occupies a queue slot (taken by the thread, or ended); idempotent."""
        if handle in self._counted:
            self._counted.remove(handle)
            self.pending -= 1

    async def load(
        self, load: Callable[[ProgressCallback], Engine], progress: ProgressCallback
    ) -> EngineFacts:
        """Load the engine on the executor thread; `progress(done, total)` runs on the trio thread."""
        command = _Load(load, progress)
        await self._send.send(command)
        await command.done.wait()
        if command.error is not None:
            raise command.error
        assert command.facts is not None
        return command.facts

    async def check_residency(self) -> ResidencyReport:
        """Run `engine.check_residency()` on the executor thread (between jobs or steps)."""
        check = _Check()
        self._checks.append(check)
        # Wake an idle thread (one wake-up in flight is enough). A busy thread polls `_checks`
        # between steps; a full channel means a busy thread.
        if not self._wake_pending:
            with contextlib.suppress(trio.WouldBlock):
                self._send.send_nowait(_WAKE)
                self._wake_pending = True
        try:
            await check.done.wait()
        except BaseException:
            # Timed out (stuck executor) or cancelled: a thread that comes back later need
            # not run a check nobody waits for (deque.remove is atomic under the GIL).
            with contextlib.suppress(ValueError):
                self._checks.remove(check)
            raise
        if check.error is not None:
            raise check.error
        assert check.report is not None
        return check.report

    async def stop(self) -> None:
        """Finish the running job at its next step, close the engine, end the thread; returns
        once the thread has (at once when it never started)."""
        self._stopping = True
        await self._send.send(_STOP)
        if self._token is not None:
            await self._finished.wait()

    def _take(self, handle: JobHandle) -> bool:
        self.release(handle)  # a no-op when it ended while queued (released then)
        return handle.try_start()

    # ------------------------------------------------------------------ executor thread

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # trio is gone: nobody is left to tell
            self._token.run_sync_soon(fn, *args)

    async def _receive_commands(self, block: bool, room: int) -> list[object]:
        """On the trio thread: the commands waiting (at least one when `block`), taking at most
        `room` jobs; a job ended while queued is skipped, a taken one is RUNNING. Jobs beyond
        `room` stay in the channel for a later call (never received, so never lost)."""
        taken: list[object] = []

        def take(command: object) -> None:
            nonlocal room
            if not isinstance(command, JobHandle):
                taken.append(command)
            elif room > 0 and self._take(command):
                taken.append(command)
                room -= 1
            # else: ended while queued (its terminal event is out): nothing to run

        if block:
            take(await self._receive.receive())
        while room > 0 and not (taken and taken[-1] is _STOP):
            try:
                command = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            take(command)
        return taken

    def _thread_main(self, started: Callable[[Executor], None]) -> None:
        trio.from_thread.run_sync(started, self)
        try:
            while True:
                self._service_checks()
                batcher = self._batcher
                busy = batcher is not None and batcher.busy
                if busy:
                    self._end_cancelled()
                    waiting = self._receive.statistics().current_buffer_used > 0  # a hint
                    if not (waiting and batcher.has_room):
                        self._step()
                        continue
                room = batcher.room if batcher is not None else 0
                try:
                    commands = trio.from_thread.run(self._receive_commands, not busy, room)
                except (trio.Cancelled, trio.RunFinishedError):
                    return
                for command in commands:
                    if command is _WAKE:
                        self._wake_pending = False  # the checks are serviced at the loop's top
                    elif command is _STOP:
                        return
                    elif isinstance(command, _Load):
                        self._load(command)
                    elif isinstance(command, JobHandle):
                        self._admit(command)
                if self._batcher is not None and self._batcher.busy:
                    self._step()
        finally:
            self._end_all(_SHUTDOWN)
            if self._engine is not None:
                freed = self._engine.memory_bytes()
                self._engine.close()
                self._engine = None
                self._narrator.emit(
                    "engine_closed",
                    human=f"Engine closed: {freed} bytes of model memory released.",
                    freed_bytes=freed,
                )

    def _load(self, command: _Load) -> None:
        def progress(done: int, total: int) -> None:
            if self._stopping:  # SIGTERM while loading: abandon the load rather than finish it
                raise Cancelled("the worker is shutting down; load abandoned")
            self._post(command.progress, done, total)

        try:
            engine = command.load(progress)
            self._engine = engine
            self._batcher = Batcher(engine)
            command.facts = EngineFacts(
                backend=engine.backend,
                quant_kind=engine.quant_kind,
                memory_bytes=engine.memory_bytes(),
                max_context=engine.max_context,
                max_batch=engine.max_batch,
            )
        except Exception as error:  # reported to the loader, which decides it is fatal
            command.error = error
        self._post(command.done.set)

    def _service_checks(self) -> None:
        while self._checks:
            check = self._checks.popleft()
            try:
                if self._engine is None:
                    check.report = ResidencyReport(False, 0, "no model is loaded")
                else:
                    check.report = self._engine.check_residency()
            except Exception as error:
                check.error = error
            self._post(check.done.set)
            if getattr(check.error, "fatal", False):
                # A poisoned CUDA context cannot serve another job: end the actor (and process).
                raise check.error

    # -- the step loop: admit, step, retire (runtime.batcher does the engine's part) ----------

    def _admit(self, handle: JobHandle) -> None:
        job, engine, tokenizer, batcher = handle.job, self._engine, self.tokenizer, self._batcher
        assert engine is not None and tokenizer is not None and batcher is not None
        request = job.request
        narrator = self._narrator.child(job_id=job.job_id, correlation_id=job.correlation_id)
        self._post(handle.deliver, Started(len(job.prompt_ids), request.params.seed, _utc_now()))
        job_log.started(narrator, job)
        running = _Running(handle, narrator)
        try:
            seq = Sequence(
                job.prompt_ids,
                request.params,
                max_tokens=request.max_tokens,
                decoder=tokenizer.incremental_decoder(),
                eog_ids=tokenizer.eog_ids,
                max_context=engine.max_context,
                stops=request.stop,
                tag=running,
            )
        except WorkerError as error:
            self._finish(running, Failed(error.code, error.message))
            return
        batcher.admit(seq)
        self._publish()

    def _step(self) -> None:
        """One step of the running batch; each outcome goes to its job as soon as it is known."""
        batcher = self._batcher
        assert batcher is not None
        try:
            outcomes = batcher.step()
        except WorkerError as error:  # fatal (a poisoned CUDA context): every job ends with it
            self._end_all(error.message, code=error.code)
            raise
        except Exception as error:
            # Unknown engine state: fail the jobs, then let the executor die (worker exits
            # non-zero).
            self._end_all(f"internal error: {type(error).__name__}", code=ErrorCode.INTERNAL)
            raise
        for seq, outcome in outcomes:
            running: _Running = seq.tag
            if isinstance(outcome, TokenOut):
                self._post(running.handle.deliver, Token(outcome.text, outcome.index))
                running.output.append(outcome.text)
            elif isinstance(outcome, Finished):
                end = End(outcome.tokens_out, round(outcome.decode_time_ms, 3), outcome.stop_reason)
                self._finish(running, end)
            else:  # a WorkerError of this sequence only (the batcher retired it)
                self._finish(running, Failed(outcome.code, outcome.message))
        self._publish()

    def _end_cancelled(self) -> None:
        """Retire every sequence whose job was cancelled (or the client left), or all of them
        when the worker stops: each gets its terminal CANCELLED before the next step runs."""
        batcher = self._batcher
        assert batcher is not None
        for seq in list(batcher.running.values()):
            running: _Running = seq.tag
            handle = running.handle
            if handle.cancel_requested or self._stopping:
                batcher.retire(seq)
                reason = handle.cancel_reason if handle.cancel_requested else _SHUTDOWN
                self._finish(running, Failed(ErrorCode.CANCELLED, reason))
        self._publish()

    def _end_all(self, message: str, *, code: ErrorCode = ErrorCode.CANCELLED) -> None:
        batcher = self._batcher
        if batcher is None:
            return
        for seq in list(batcher.running.values()):
            if self._engine is not None:
                batcher.retire(seq)
            self._finish(seq.tag, Failed(code, message))
        self._publish()

    def _publish(self) -> None:
        """What the trio side may read between steps (plain int writes: atomic)."""
        batcher = self._batcher
        if batcher is not None:
            self.running, self.kv_tokens = len(batcher.running), batcher.kv_tokens()

    def _finish(self, running: _Running, final: End | Failed) -> None:
        # Log first: once a client has read its end event, execute_end is already in the log
        # (tests and operators can rely on that order; the write costs microseconds).
        job_log.ended(running.narrator, running.handle.job, final, "".join(running.output))
        self._post(running.handle.deliver, final)
