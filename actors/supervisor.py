"""The supervisor: builds the worker, starts the actors in order, drains on SIGTERM/SIGINT.

    root nursery (run_worker)
      http      hypercorn.trio.serve            started first: /health answers "loading"
      signals   SIGTERM/SIGINT -> drain -> stop
      core      executor thread -> loader -> residency monitor -> "ready"

Every actor runs in one nursery, so an actor that raises cancels its siblings and the process
exits non-zero (`runtime.cli`): the worker never serves HTTP with a dead executor. Under the
`hypercorn` command (`runtime.asgi`) the core runs in the app's lifespan nursery instead and a
crash ends the process the same way.

Draining: status `draining` (new jobs 503), every queued and running job gets a terminal
`error` CANCELLED, streams get `drain_timeout_s` to flush it, the executor closes the engine,
hypercorn stops. All within the 5 s the protocol allows.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any

import trio

from actors.executor import Executor
from actors.http import run_http
from actors.jobs import Failed
from actors.loader import ModelInfo, default_engine_loader, open_model_info, run_loader
from actors.residency import run_residency_monitor
from actors.scheduler import Scheduler
from api.app import create_app
from api.fast_health import HealthFastPath
from api.prompt import chat_template_problem
from runtime.cli import first_error
from runtime.config import WorkerConfig
from runtime.errors import ErrorCode
from runtime.narration import Narrator
from runtime.state import Status, WorkerState

ACTOR = "supervisor"
EXECUTOR_STOP_TIMEOUT_S = 1.0


def model_name(path: Path) -> str:
    return path.name.removesuffix(".gguf")


def narrate_startup(
    narrator: Narrator, config: WorkerConfig, path: Path, backend: str, *, via: str
) -> None:
    """The `startup` event, the same from the CLI and from the hypercorn command."""
    why = "auto-detected" if config.backend == "auto" else "as requested"
    narrator.emit(
        "startup",
        actor="supervisor",
        target=str(path),
        human=f"Starting worker {config.worker_id} {via}: {path.name} on the {backend} backend ({why}).",
        backend=backend,
        backend_requested=config.backend,
        host=config.host,
        port=config.port,
        max_context=config.max_context,
        queue_size=config.queue_size,
    )


class Worker:
    """The parts of one worker process and how they start and stop; no I/O in the constructor."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        backend: str,
        narrator: Narrator | None = None,
        info_loader=open_model_info,
        engine_loader=default_engine_loader,
        residency_check_timeout_s: float | None = None,
    ):
        self.config = config
        self.path = config.resolved_model_path()
        self.backend = backend  # resolved: "cpu" | "cuda"
        self.narrator = narrator or Narrator(config.worker_id, model=model_name(self.path))
        self.state = WorkerState(config.worker_id, model_name(self.path), backend)
        self.executor = Executor(narrator=self.narrator, queue_size=config.queue_size)
        self.scheduler = Scheduler(executor=self.executor, state=self.state, narrator=self.narrator)
        self.info: ModelInfo | None = None
        self.open_streams = 0  # SSE responses still being written (the drain waits for them)
        self._info_loader = info_loader
        self._engine_loader = engine_loader
        # None: max(5 s, 3 residency intervals); a check slower than this means a stuck executor
        self._residency_check_timeout_s = residency_check_timeout_s
        # Made here, not in `run_core`: a shutdown that comes before the core starts (SIGTERM
        # during startup) cancels it ahead of time, and a scope cancelled before it is entered
        # is cancelled on entry, so `run_core` then returns at once instead of loading a model
        # for an executor that was already told to stop (and waiting on it forever).
        self._core_scope = trio.CancelScope()
        self.ready = trio.Event()  # set once the model is resident and jobs are admitted
        self.stopped = trio.Event()  # set once drained: the HTTP server may stop
        self.quart = create_app(self)  # routes; hooks are registered on this one
        self.app = HealthFastPath(self.quart, self.state)  # what hypercorn serves

    def narrate(self, action: str, *, level: str = "info", human: str, **fields: Any) -> None:
        self.narrator.emit(
            action, level=level, actor=ACTOR, target=self.state.model, human=human, **fields
        )

    async def run_core(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Executor, loader, residency monitor; `started()` once the worker is ready.

        When one of them crashes, every live stream first gets its terminal event (the crash's
        code: CUDA_ERROR for a lost context, else INTERNAL), then the crash propagates and ends
        the process: no stream is cut without a last word, and no dead executor keeps serving.
        """
        try:
            await self._run_core(task_status=task_status)
        except BaseException as crash:
            if not _only_cancellation(crash):
                await self._end_streams_after_crash(crash)
            raise

    async def _end_streams_after_crash(self, crash: BaseException) -> None:
        error = first_error(crash)
        code = getattr(error, "code", ErrorCode.INTERNAL)
        message = getattr(error, "message", None) or f"internal error: {type(error).__name__}"
        self.state.mark_unhealthy(f"an actor crashed: {message}")
        for handle in list(self.scheduler.live.values()):
            # A job that already ended (the one that hit the error) keeps its own outcome.
            handle.deliver(Failed(ErrorCode(code), f"the worker is stopping: {message}"))
        # Shielded: the crash is already cancelling this scope; bounded: never hang an exit.
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.drain_timeout_s):
            while self.scheduler.live or self.open_streams:
                await trio.sleep(0.01)

    async def _run_core(self, *, task_status: trio.TaskStatus[None]) -> None:
        with self._core_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.executor.run)
                loaded = await nursery.start(
                    functools.partial(
                        run_loader,
                        config=self.config,
                        path=self.path,
                        backend=self.backend,
                        state=self.state,
                        executor=self.executor,
                        narrator=self.narrator,
                        info_loader=self._info_loader,
                        engine_loader=self._engine_loader,
                    )
                )
                # The tokenizer before the status: a request admitted as "ready" finds it.
                self.info = loaded.info
                problem = await trio.to_thread.run_sync(
                    chat_template_problem, loaded.info.chat_template
                )
                if problem is not None:  # prompts still work; messages get a clear 400
                    self.narrate(
                        "chat_template_unusable",
                        level="warning",
                        human=f"The model's chat template cannot be used ({problem}); "
                        "requests with messages will be refused, prompts are served.",
                        detail=problem,
                    )
                self.state.mark_ready(loaded.facts, loaded.backend)
                await nursery.start(
                    functools.partial(
                        run_residency_monitor,
                        check=self.executor.check_residency,
                        state=self.state,
                        narrator=self.narrator,
                        interval_s=self.config.residency_interval_s,
                        check_timeout_s=self._residency_check_timeout_s,
                    )
                )
                self.narrate(
                    "ready",
                    human=f"Ready: {self.state.model} on {self.state.backend}, accepting jobs.",
                    backend=self.state.backend,
                )
                self.ready.set()
                task_status.started()

    async def drain(self, reason: str) -> None:
        """Refuse new jobs, end every live stream with a terminal event, stop the executor."""
        self.state.mark_draining(reason)
        cancelled = self.scheduler.cancel_all("the worker is shutting down")
        self.narrate(
            "shutdown", human=f"Draining ({reason}): cancelling {cancelled} job(s).", jobs=cancelled
        )
        with trio.move_on_after(self.config.drain_timeout_s):
            while self.scheduler.live or self.open_streams:
                await trio.sleep(0.01)
        with trio.move_on_after(EXECUTOR_STOP_TIMEOUT_S):
            await self.executor.stop()
        self._core_scope.cancel()

    async def shutdown(self, reason: str) -> None:
        """Drain, then let the HTTP server stop (SIGTERM/SIGINT, or a test)."""
        if self.stopped.is_set():
            return
        await self.drain(reason)
        self.stopped.set()


def _only_cancellation(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_cancellation(e) for e in error.exceptions)
    return isinstance(error, trio.Cancelled)


SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _watch_signals(worker: Worker, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The first SIGTERM/SIGINT drains the worker; repeats are narrated and ignored.

    The signals are set to "ignore" before the receiver opens, so that is what they fall back
    to when it closes (trio restores the handler found on entry and re-raises signals it had
    not read yet): a second Ctrl-C or `kill` during the final second of the shutdown, or after
    `trio.run` returned, can neither kill the process nor turn exit 0 into a KeyboardInterrupt.
    This leaves SIGTERM/SIGINT ignored after `run_worker` returns: the process is exiting.
    """
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    with trio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if worker.state.status is Status.DRAINING or worker.stopped.is_set():
                worker.narrate(
                    "signal_ignored",
                    level="warning",
                    human=f"Received {name} again; already shutting down.",
                    signal=name,
                )
                continue
            worker.narrate("signal", human=f"Received {name}; shutting down.", signal=name)
            await worker.shutdown(f"received {name}")


async def run_worker(
    worker: Worker, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """The whole worker under one root nursery; returns after a clean drain, raises on a crash.

    `started(binds)` as soon as HTTP listens; `worker.ready` tells when the model is loaded.
    The signal watcher lives in a nursery around the root one, so it keeps receiving (and
    ignoring repeats) until HTTP has stopped too.
    """
    async with trio.open_nursery() as outer:
        if handle_signals:
            await outer.start(_watch_signals, worker)
        async with trio.open_nursery() as root:
            binds = await root.start(
                functools.partial(
                    run_http,
                    worker.app,
                    host=worker.config.host,
                    port=worker.config.port,
                    narrator=worker.narrator,
                    shutdown_trigger=worker.stopped.wait,
                )
            )
            task_status.started(binds)
            await worker.run_core()
            # The core ends only when drained (or crashed, which cancels everything anyway).
            await worker.stopped.wait()
        # Hypercorn stopped by itself once `stopped` was set; only the signal watcher is left.
        outer.cancel_scope.cancel()
