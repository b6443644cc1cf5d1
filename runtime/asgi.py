"""The worker as an ASGI app for the `hypercorn` command:

    WORKER_ORCD_BACKEND=cpu hypercorn --worker-class trio --bind 127.0.0.1:8080 runtime.asgi:app

Settings come from `WORKER_ORCD_*` environment variables (MODEL, BACKEND, MAX_CONTEXT, WORKER_ID,
GPU_DEVICE, RESIDENCY_INTERVAL, QUEUE_SIZE, DRAIN_TIMEOUT; see `runtime.config`). Hypercorn owns
the socket and the signals here; the actor core (executor, loader, residency monitor) runs in
the app's lifespan nursery, started before hypercorn binds, so `/health` says `loading` first.

Same rule as under `worker-orcd`: if an actor dies, the process dies with a non-zero status
rather than serve HTTP with a dead executor. Hypercorn cannot be told to exit non-zero from
inside an app, so the crash is narrated and the process ends with `os._exit(1)`; hypercorn's
parent process then exits with that status too.

`app` is a thin ASGI callable that builds the real app on its first call (hypercorn's lifespan
startup), so importing this module has no side effects and a missing model is reported as a
failed startup.
"""

from __future__ import annotations

import os
import sys

import attrs
import trio

from runtime.cli import EXIT_CRASH, describe, first_error
from runtime.config import WorkerConfig


def create_app(config: WorkerConfig | None = None):
    """A quart-trio app running a whole worker (model from `config` or the environment)."""
    from actors.supervisor import Worker, model_name
    from runtime.backends import pick_backend
    from runtime.narration import Narrator

    config = config or WorkerConfig.from_env()
    path = config.resolved_model_path()
    narrator = Narrator(config.worker_id, model=model_name(path))
    backend = pick_backend(config.backend)
    worker = Worker(attrs.evolve(config, model=path), backend=backend, narrator=narrator)
    app = worker.app

    async def guarded_core() -> None:
        try:
            await worker.run_core()
        except BaseException as error:
            if isinstance(first_error(error), trio.Cancelled):
                raise
            narrator.emit(
                "error",
                level="error",
                actor="supervisor",
                human=f"An actor crashed; the worker stops: {describe(error)}",
                code="INTERNAL",
            )
            narrator.emit(
                "shutdown",
                level="error",
                actor="supervisor",
                human="Worker stopped after a crash.",
                exit_code=EXIT_CRASH,
            )
            sys.stderr.flush()
            os._exit(EXIT_CRASH)

    @app.before_serving
    async def start_core() -> None:
        why = "auto-detected" if config.backend == "auto" else "as requested"
        narrator.emit(
            "startup",
            actor="supervisor",
            target=str(path),
            human=f"Starting worker {config.worker_id} under hypercorn: {path.name} on {backend} ({why}).",
            backend=backend,
            backend_requested=config.backend,
        )
        app.nursery.start_soon(guarded_core)

    @app.after_serving
    async def stop_core() -> None:
        # Hypercorn has stopped accepting and waited its graceful timeout; end what is left.
        with trio.move_on_after(config.drain_timeout_s + 1.5):
            await worker.shutdown("hypercorn is shutting down")
        narrator.emit("shutdown", actor="supervisor", human="Worker stopped cleanly.", exit_code=0)

    app.worker = worker  # for tests and operators poking at a live app
    return app


class LazyApp:
    """ASGI app that creates the worker app from the environment on first use."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


app = LazyApp()
