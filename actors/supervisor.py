"""The supervisor: builds the worker, starts the actors in order, drains when asked to.

    root nursery (run_worker)
      http      hypercorn.trio.serve            started first: /health answers "loading"
      aux       shutdown requests -> drain; the ready callback (--callback-url), once ready
      core      executor thread -> loader -> residency monitor -> "ready"

Every actor runs in one nursery, so an actor that raises cancels its siblings and the process
exits non-zero (`worker_orcd.boot`): the worker never serves HTTP with a dead executor. Under the
`hypercorn` command (`worker_orcd.asgi`) the core runs in the app's lifespan nursery instead and
a crash ends the process the same way. The supervisor knows nothing of HTTP routes: the entry
point builds the app from `worker.service` (api.app.create_app) and hands it to `run_worker`.

Shutting down (POST /shutdown, SIGTERM/SIGINT, a test): `service.request_shutdown` marks the
worker `draining` at once (new jobs 503); the aux task then runs `Worker.shutdown`: queued jobs
cancelled, the running one may finish until `--shutdown-deadline` (then CANCELLED), streams get
`drain_timeout_s` to flush, the executor closes the engine, hypercorn stops.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import trio

from actors.callback import announce_ready
from actors.executor import Executor
from actors.http import run_http
from actors.loader import ModelInfo, default_engine_loader, open_model_info, run_loader
from actors.residency import run_residency_monitor
from actors.service import WorkerService
from runtime.config import WorkerConfig
from runtime.errors import ErrorCode, first_error
from runtime.narration import Narrator
from runtime.prompt import chat_template_problem
from runtime.state import WorkerState

ACTOR = "supervisor"


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
        self.service = WorkerService(
            config=config, state=self.state, executor=self.executor, narrator=self.narrator
        )
        self.scheduler = self.service.scheduler
        self.binds: list[str] = []  # the URLs HTTP listens on, once it does (port 0 resolved)
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
        self._shutting_down = False

    @property
    def info(self) -> ModelInfo | None:
        return self.service.info

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
        self.service.end_all_after_crash(ErrorCode(code), message)
        # Shielded: the crash is already cancelling this scope; bounded: never hang an exit.
        with trio.CancelScope(shield=True):
            await self.service.wait_quiet(self.config.drain_timeout_s)

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
                self.service.info = loaded.info
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
                self.service.metrics.model_ready(loaded.facts.quant_kind)
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

    async def shutdown(self, reason: str) -> None:
        """Drain (see the module docstring), then let the HTTP server stop; idempotent."""
        self.service.request_shutdown(reason)
        if self._shutting_down:
            await self.stopped.wait()
            return
        self._shutting_down = True
        await self.service.drain(reason, self.config.shutdown_deadline_s)
        self._core_scope.cancel()
        self.stopped.set()

    async def run(self, binds: list[str]) -> None:
        """Core, shutdown requests and the ready callback; returns once drained, raises on a
        crash. `binds`: the URLs HTTP listens on (the first one goes into the ready callback)."""
        self.binds = list(binds)
        async with trio.open_nursery() as aux:
            aux.start_soon(self._shutdown_when_requested)
            if self.config.callback_url:
                aux.start_soon(self._announce_when_ready)
            await self.run_core()
            # The core ends only when drained (or crashed, which cancels everything anyway).
            await self.stopped.wait()
            aux.cancel_scope.cancel()

    async def _shutdown_when_requested(self) -> None:
        await self.service.shutdown_requested.wait()
        await self.shutdown(self.service.shutdown_reason)

    async def _announce_when_ready(self) -> None:
        await self.ready.wait()
        await announce_ready(self.config, self.state, uri=self.binds[0], narrator=self.narrator)


def _only_cancellation(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_cancellation(e) for e in error.exceptions)
    return isinstance(error, trio.Cancelled)


async def run_worker(worker: Worker, app, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The whole worker under one root nursery, serving the ASGI `app` (api.app.create_app).

    `started(binds)` as soon as HTTP listens; `worker.ready` tells when the model is loaded.
    Returns after a clean drain, raises on a crash (and on a refused ready callback).
    """
    async with trio.open_nursery() as root:
        binds = await root.start(
            functools.partial(
                run_http,
                app,
                host=worker.config.host,
                port=worker.config.port,
                narrator=worker.narrator,
                shutdown_trigger=worker.stopped.wait,
                write_timeout_s=worker.config.write_timeout_s,
            )
        )
        task_status.started(binds)
        await worker.run(binds)
        # Hypercorn stops by itself once `stopped` is set.
