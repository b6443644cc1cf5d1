"""The service layer: the one object every front end talks to (native SSE, metrics, admin, ...).

    submit(request, correlation_id) -> JobStream   admit, tokenize off-thread, queue; or refuse
    cancel(job_id)                  -> bool        True: live or recently finished (202)
    request_shutdown(reason)        -> bool        True the first time (POST /shutdown, SIGTERM)
    drain(reason, deadline_s)                      refuse new work, let the running job finish
                                                   until the deadline, then cancel; engine closed
    stats()                         -> ServiceStats  cached numbers only (no engine call)

A front end only translates its wire format into a `GenerationRequest` and the events of a
`JobStream` into its own encoding; admission, tokenizing, counters, redaction and the drain
are here, once. Everything runs on the trio thread. See specs/decisions/0016-service-layer.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import trio

from actors.executor import Executor
from actors.jobs import TERMINAL, End, Failed, Job, JobEvent, JobHandle, JobState, Started, Token
from actors.metrics import JobMetrics, ServiceStats
from actors.scheduler import Scheduler
from runtime.config import WorkerConfig
from runtime.errors import ErrorCode, WorkerError
from runtime.narration import Narrator, fingerprint
from runtime.prompt import prompt_token_ids
from runtime.request import GenerationRequest
from runtime.state import WorkerState

# The events a JobStream yields are the service's vocabulary: front ends import them from here.
__all__ = [
    "End",
    "Failed",
    "JobEvent",
    "JobStream",
    "ServiceStats",
    "Started",
    "Token",
    "WorkerService",
]

ACTOR = "service"
EXECUTOR_STOP_TIMEOUT_S = 1.0


class JobStream:
    """One job's events for one front end: `async for batch in stream`, then `close()`.

    A batch is every event already waiting (at least one): when the socket fell behind (a fast
    GPU, a slow client) they go out in one write instead of one write per token. A stream
    closed before its terminal event (the client went away) cancels its job at once.
    """

    def __init__(self, service: WorkerService, handle: JobHandle):
        self._service, self.handle = service, handle
        self._opened = self._finished = self._closed = False

    @property
    def job_id(self) -> str:
        return self.handle.job_id

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> list[JobEvent]:
        if not self._opened:
            self._opened = True
            self._service.open_streams += 1
        if self._finished or self._closed:
            raise StopAsyncIteration
        try:
            batch = [await self.handle.events.receive()]
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        while not isinstance(batch[-1], TERMINAL):
            try:
                batch.append(self.handle.events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._finished = isinstance(batch[-1], TERMINAL)
        return batch

    def close(self) -> None:
        """Idempotent, never awaits (it runs in a response generator's `finally`)."""
        if self._closed:
            return
        self._closed = True
        if self._opened:
            self._service.open_streams -= 1
        if not self._finished:
            self.handle.client_gone()
        self._service.poke()


class WorkerService:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        state: WorkerState,
        executor: Executor,
        narrator: Narrator,
        info=None,
    ):
        self.config, self.state, self.executor = config, state, executor
        self.info = info  # actors.loader.ModelInfo, set once the model is loaded
        self.metrics = JobMetrics(worker_id=config.worker_id, model=state.model)
        self.metrics.register(self.stats)
        self.scheduler = Scheduler(
            executor=executor, state=state, narrator=narrator, on_event=self._on_event
        )
        self.narrator = narrator.child(actor=ACTOR)
        self.open_streams = 0  # JobStreams being written (the drain waits for them)
        self.shutdown_requested = trio.Event()
        self.shutdown_reason = ""
        self._holds: dict[JobHandle, int] = {}  # redaction keys of live jobs' texts
        self._changed = trio.Event()  # set (and replaced) whenever a job or stream ends

    @property
    def model(self) -> str:
        return self.state.model

    def health(self) -> tuple[int, dict]:
        """The state's answer, plus the jobs running on the engine and queued behind them."""
        status, body = self.state.health()
        facts = self.state.facts
        body["running"] = self._running()
        body["queued"] = self.executor.pending
        body["max_batch"] = facts.max_batch if facts else None
        return status, body

    def _running(self) -> int:
        return sum(h.state is JobState.RUNNING for h in self.scheduler.live.values())

    def admission_error(self) -> WorkerError | None:
        return self.scheduler.admission_error()

    @contextlib.contextmanager
    def client_texts(self, texts: Iterable[str]) -> Iterator[None]:
        """Keep `texts` out of the logs while a front end handles them (a request body)."""
        key = self.narrator.redactor.hold(texts)
        try:
            yield
        finally:
            self.narrator.redactor.release(key)

    async def submit(self, request: GenerationRequest, correlation_id: str) -> JobStream:
        """Admit `request` or raise its refusal (a `WorkerError`: 400, 409, 503 ...)."""
        received_at = time.perf_counter()
        key = self.narrator.redactor.hold(request.user_texts())
        try:
            error = self.admission_error()
            if error is not None:
                raise error
            # 409 / 503 BUSY before the tokenizing work; from here /cancel finds the job.
            reservation = self.scheduler.reserve(request.job_id)
            try:
                context_length = self.state.facts.context_length
                ids, text = await trio.to_thread.run_sync(
                    prompt_token_ids, self.info, request, context_length
                )
                request = request.fitted(len(ids), context_length)
                job = Job(
                    request.job_id,
                    ids,
                    request,
                    correlation_id,
                    prompt_fingerprint=fingerprint(text),
                    prompt_text=text if self.config.log_prompts else None,
                    received_at=received_at,
                )
                handle = self.scheduler.submit(job, reservation)
            finally:
                self.scheduler.unreserve(reservation)
        except BaseException:
            self.narrator.redactor.release(key)
            raise
        if handle.state is JobState.DONE:  # cancelled while it was tokenized
            self.narrator.redactor.release(key)
        else:
            self._holds[handle] = key
        return JobStream(self, handle)

    def refused(self, job_id: str, correlation_id: str, error: WorkerError) -> None:
        """Narrate a refusal (any front end's): code and field; the message passes redaction."""
        self.narrator.emit(
            "execute_rejected",
            level="warning",
            target=job_id[:128],
            correlation_id=correlation_id,
            human=f"Refused a job: {error.code} {error.message}",
            code=str(error.code),
            field=error.field,
        )

    def cancel(self, job_id: str, *, correlation_id: str | None = None) -> bool:
        return self.scheduler.cancel(job_id, correlation_id=correlation_id)

    def _on_event(self, handle: JobHandle, event: JobEvent) -> None:
        self.metrics.observe(handle, event)
        if isinstance(event, TERMINAL):
            key = self._holds.pop(handle, None)
            if key is not None:
                self.narrator.redactor.release(key)
            self.poke()

    # ------------------------------------------------------------------ stats

    def stats(self) -> ServiceStats:
        state, facts, m = self.state, self.state.facts, self.metrics
        return ServiceStats(
            worker_id=state.worker_id,
            model=state.model,
            quant_kind=facts.quant_kind if facts else None,
            backend=state.backend,
            status=str(state.status),
            running=self._running(),
            waiting=self.executor.pending,
            open_streams=self.open_streams,
            tokens_in_total=m.tokens_in,
            tokens_generated_total=m.tokens_generated,
            requests_total=dict(m.requests),
            vram_bytes=facts.vram_bytes_used if facts else 0,
            kv_tokens=self.executor.kv_tokens,
            kv_capacity=facts.context_length * facts.max_batch if facts else None,
            uptime_s=round(time.monotonic() - state.started_monotonic, 3),
        )

    # ------------------------------------------------------------------ shutdown

    def poke(self) -> None:
        """Something ended: wake whoever waits in `_until`."""
        self._changed.set()
        self._changed = trio.Event()

    async def _until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _quiet(self) -> bool:
        live = self.scheduler.live.values()
        return self.open_streams == 0 and all(h.state is JobState.DONE for h in live)

    async def wait_quiet(self, timeout_s: float) -> bool:
        """Every job ended and every stream closed (True), or `timeout_s` passed (False)."""
        with trio.move_on_after(timeout_s):
            await self._until(self._quiet)
            return True
        return False

    def request_shutdown(self, reason: str) -> bool:
        """New work is refused from now on; the supervisor drains. False when already asked."""
        if self.shutdown_requested.is_set():
            return False
        self.shutdown_reason = reason
        self.state.mark_draining(reason)
        self.shutdown_requested.set()
        return True

    async def drain(self, reason: str, deadline_s: float) -> None:
        """Refuse new jobs, cancel the queued ones, let the running one finish until the
        deadline (then cancel it), give the streams time to flush, close the engine."""
        self.state.mark_draining(reason)
        queued = [h for h in self.scheduler.live.values() if h.state is JobState.QUEUED]
        for handle in queued:
            handle.request_cancel("the worker is shutting down")
        running = [h for h in self.scheduler.live.values() if h.state is JobState.RUNNING]
        self.narrator.emit(
            "shutdown",
            human=f"Draining ({reason}): {len(running)} running job(s) may finish within "
            f"{deadline_s:g} s; {len(queued)} queued job(s) cancelled.",
            running=len(running),
            queued=len(queued),
            deadline_s=deadline_s,
        )
        with trio.move_on_after(deadline_s):
            for handle in running:
                await handle.done.wait()
        late = self.scheduler.cancel_all("the worker is shutting down (shutdown deadline passed)")
        if late:
            self.narrator.emit(
                "shutdown_deadline",
                level="warning",
                human=f"The shutdown deadline ({deadline_s:g} s) passed: cancelled {late} job(s).",
                jobs=late,
            )
        await self.wait_quiet(self.config.drain_timeout_s)
        with trio.move_on_after(EXECUTOR_STOP_TIMEOUT_S):
            await self.executor.stop()  # the executor thread closes the engine: VRAM freed

    def end_all_after_crash(self, code: ErrorCode, message: str) -> None:
        """An actor crashed: every live job gets its terminal event with the crash's code."""
        for handle in list(self.scheduler.live.values()):
            # A job that already ended (the one that hit the error) keeps its own outcome.
            handle.deliver(Failed(code, f"the worker is stopping: {message}"))
