"""The worker as an ASGI app for the `hypercorn` command:

    WORKER_ORCD_BACKEND=cpu hypercorn --worker-class trio --workers 0 --bind 127.0.0.1:8080 runtime.asgi:app

Settings come from `WORKER_ORCD_*` environment variables (MODEL, BACKEND, MAX_CONTEXT, WORKER_ID,
GPU_DEVICE, RESIDENCY_INTERVAL, QUEUE_SIZE, DRAIN_TIMEOUT, MAX_VRAM_BYTES; see `runtime.config`). Hypercorn owns
the socket; the actor core (executor, loader, residency monitor) runs in the app's lifespan
nursery, started before hypercorn binds, so `/health` says `loading` first.

Same rules as under `worker-orcd`, which an app can only enforce by ending its own process:
- an actor dies -> the crash is narrated, then `os._exit(1)`: never HTTP with a dead executor;
- SIGTERM/SIGINT reach the app (in the process running trio's main thread) -> the same drain
  as `worker-orcd` (every stream gets its terminal event), then `os._exit(0)`.
`--workers 0` runs the app in hypercorn's own process, so both the signals and the exit status
are the worker's. With worker subprocesses (hypercorn's default, `--workers 1`), hypercorn's
parent turns SIGTERM into its own graceful shutdown (streams still running at its graceful
timeout are cut, then our `after_serving` drains the rest) and, in hypercorn 0.18, reports exit
status 0 even when its worker process exited 1. See specs/decisions/0005-actor-tree.md.

`app` is a thin ASGI callable that builds the real app on its first call (hypercorn's lifespan
startup), so importing this module has no side effects and a missing model is reported as a
failed startup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import attrs
import trio

from runtime.cli import EXIT_CRASH, first_error, narrate_crash
from runtime.config import WorkerConfig


def create_app(config: WorkerConfig | None = None):
    """A quart-trio app running a whole worker (model from `config` or the environment)."""
    from actors.supervisor import Worker, model_name, narrate_startup
    from runtime.backends import pick_backend
    from runtime.narration import Narrator

    config = config or WorkerConfig.from_env()
    path = config.resolved_model_path()
    narrator = Narrator(config.worker_id, model=model_name(path))
    backend = pick_backend(config.backend)
    worker = Worker(attrs.evolve(config, model=path), backend=backend, narrator=narrator)
    app = worker.quart

    async def guarded_core() -> None:
        try:
            await worker.run_core()
        except BaseException as error:
            if isinstance(first_error(error), trio.Cancelled):
                raise
            narrate_crash(narrator, error)
            sys.stderr.flush()
            os._exit(EXIT_CRASH)

    async def drain_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                worker.narrate("signal", human=f"Received {name}; shutting down.", signal=name)
                await worker.shutdown(f"received {name}")
                narrator.emit(
                    "shutdown", actor="supervisor", human="Worker stopped cleanly.", exit_code=0
                )
                sys.stderr.flush()
                os._exit(0)

    @app.before_serving
    async def start_core() -> None:
        narrate_startup(narrator, config, path, backend, via="under the hypercorn command")
        app.nursery.start_soon(guarded_core)
        if threading.current_thread() is threading.main_thread():
            app.nursery.start_soon(drain_on_signal)

    @app.after_serving
    async def stop_core() -> None:
        # Hypercorn has stopped accepting and waited its graceful timeout; end what is left.
        with trio.move_on_after(config.drain_timeout_s + 1.5):
            await worker.shutdown("hypercorn is shutting down")
        narrator.emit("shutdown", actor="supervisor", human="Worker stopped cleanly.", exit_code=0)

    app.worker = worker  # for tests and operators poking at a live app
    return worker.app


class LazyApp:
    """ASGI app that creates the worker app from the environment on first use."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


app = LazyApp()
