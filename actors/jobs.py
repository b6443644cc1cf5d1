"""A job and its life: queued -> running -> done, with exactly one terminal event.

The trio side owns every state change. The executor thread asks to start a job through one
blocking call (`try_start`), and reports events with fire-and-forget callbacks run on the trio
thread (`deliver`), so "cancel while queued" and "the executor picks it up" can never both win:
whichever runs first on the trio thread decides. The cancel *flag* is the one thing the executor
thread reads directly (between prefill chunks and decode steps); a bool write is atomic.
Every event passes `on_event` on its way to the stream (on the trio thread), which is where the
service's counters and latency histograms learn of it: never inside the decode loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
import trio

from runtime.errors import RETRIABLE, ErrorCode
from runtime.request import GenerationRequest


@attrs.frozen
class Started:
    prompt_tokens: int
    seed: int
    started_at: str  # ISO-8601 UTC


@attrs.frozen
class Token:
    text: str  # may be "" (held back for a stop string or an unfinished UTF-8 character)
    index: int


@attrs.frozen
class End:
    tokens_out: int
    decode_time_ms: float
    stop_reason: str  # max_tokens | eos | stop_sequence


@attrs.frozen
class Failed:
    code: ErrorCode
    message: str

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE


JobEvent = Started | Token | End | Failed
TERMINAL = (End, Failed)


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@attrs.frozen
class Job:
    """What the executor needs to run one request: tokens in, limits, sampling."""

    job_id: str
    prompt_ids: tuple[int, ...]
    request: GenerationRequest
    correlation_id: str
    prompt_fingerprint: dict | None = None  # runtime.narration.fingerprint of the prompt text
    prompt_text: str | None = None  # set only with --log-prompts (then logged, and says so)
    received_at: float = 0.0  # time.perf_counter() when the service got it (time to first token)


class JobHandle:
    """The trio-side record of one job: state, cancel flag, and the stream of its events.

    The event channel's buffer holds every event a job can produce (started, max_tokens tokens,
    one terminal), so `deliver` never blocks and never drops.
    """

    def __init__(
        self,
        job: Job,
        on_done: Callable[[JobHandle], None] | None = None,
        on_event: Callable[[JobHandle, JobEvent], None] | None = None,
    ):
        self.job = job
        self._on_done = on_done
        self._on_event = on_event
        self.state = JobState.QUEUED
        self.cancel_requested = False  # read by the executor thread between steps
        self.cancel_reason = "the job was cancelled"
        self.cancel_noted = False  # narrated once, however often the client asks
        self.outcome: JobEvent | None = None  # the terminal event, once done
        self.done = trio.Event()
        self._send, self.events = trio.open_memory_channel[JobEvent](job.request.max_tokens + 2)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def try_start(self) -> bool:
        """Executor: may I run it? False when it was cancelled (or finished) while queued."""
        if self.state is not JobState.QUEUED or self.cancel_requested:
            return False
        self.state = JobState.RUNNING
        return True

    def request_cancel(self, reason: str = "the job was cancelled") -> bool:
        """Set the flag; a queued job ends now, a running one at its next step. True if it was live."""
        if self.state is JobState.DONE:
            return False
        if not self.cancel_requested:
            self.cancel_requested = True
            self.cancel_reason = reason
        if self.state is JobState.QUEUED:
            self.deliver(Failed(ErrorCode.CANCELLED, reason))
        return True

    def deliver(self, event: JobEvent) -> None:
        """Pass one event to the stream; after the terminal event everything is ignored."""
        if self.state is JobState.DONE:
            return
        if isinstance(event, TERMINAL):
            self.state = JobState.DONE
            self.outcome = event
            self.done.set()
        if self._on_event is not None:
            self._on_event(self, event)
        try:
            self._send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away: nobody reads the stream; stop spending the engine on it.
            if not self.cancel_requested:
                self.cancel_requested = True
                self.cancel_reason = "the client disconnected"
        if isinstance(event, TERMINAL):
            self._send.close()
            if self._on_done is not None:
                self._on_done(self)

    def client_gone(self) -> None:
        """The SSE stream stopped reading (disconnect): cancel, and close our end."""
        self.events.close()
        self.request_cancel("the client disconnected")
