"""The worker as an ASGI app for the `hypercorn` command:

    WORKER_ORCD_BACKEND=cpu hypercorn --worker-class trio --workers 0 --bind 127.0.0.1:8080 worker_orcd.asgi:app

Settings come from `WORKER_ORCD_*` environment variables (MODEL, BACKEND, MAX_CONTEXT, WORKER_ID,
GPU_DEVICE, RESIDENCY_INTERVAL, QUEUE_SIZE, DRAIN_TIMEOUT, SHUTDOWN_DEADLINE, MAX_VRAM_BYTES,
CALLBACK_URL, MODEL_REF, LOG_FORMAT, LOG_LEVEL, LOG_PROMPTS, LOG_HASH_KEY, BODY_TIMEOUT, API_KEY,
ALLOWED_HOSTS; see `runtime.config`; WRITE_TIMEOUT applies under `worker-orcd` only). Hypercorn
owns the socket; the worker (executor, loader, residency monitor, shutdown requests, the ready
callback) runs in the app's lifespan nursery, started before hypercorn binds, so `/health`
says `loading` first. The process is booted exactly as under `worker-orcd` (worker_orcd.boot):
same GC policy, same log format (hypercorn's own lines included), same signal handling.

Same rules as under `worker-orcd`, which an app can only enforce by ending its own process:
- an actor dies (or the ready callback is refused) -> the crash is narrated, then `os._exit(1)`;
- POST /shutdown, or SIGTERM/SIGINT (in the process running trio's main thread) -> the same
  drain as `worker-orcd`, then `os._exit(0)`; repeated signals are narrated and ignored.
`--workers 0` runs the app in hypercorn's own process, so both the signals and the exit status
are the worker's. See specs/decisions/0005-actor-tree.md for hypercorn's parent process.
The ready callback's `uri` is `http://WORKER_ORCD_HOST:WORKER_ORCD_PORT` here (an app cannot see
hypercorn's bound socket): set both to the `--bind` address, and not port 0, when using it.

`app` is a thin ASGI callable that builds the real app on its first call (hypercorn's lifespan
startup), so importing this module has no side effects and a missing model is reported as a
failed startup.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import trio

from actors.http import route_logger
from runtime.cli import EXIT_CRASH, EXIT_OK
from runtime.config import WorkerConfig
from runtime.errors import first_error
from worker_orcd import boot

HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")
# The app ends the process itself (hypercorn would not stop for it): responses still being sent
# when the drain is over (POST /shutdown's 202 on an idle worker) get this long to go out.
FLUSH_S = 0.1


def _exit(status: int) -> None:
    sys.stderr.flush()
    os._exit(status)


def create_app(config: WorkerConfig | None = None):
    """An ASGI app running a whole worker (settings from `config` or the environment)."""
    config = config or WorkerConfig.from_env()
    process = boot.start_process(config)
    worker, app = boot.build_worker(process, via="under the hypercorn command")
    quart, narrator = app.quart, worker.narrator
    host = f"[{config.host}]" if ":" in config.host else config.host

    async def run_then_exit() -> None:
        try:
            await worker.run([f"http://{host}:{config.port}"])
        except BaseException as error:
            if isinstance(first_error(error), trio.Cancelled):
                raise
            boot.narrate_crash(narrator, error)
            _exit(EXIT_CRASH)
        await trio.sleep(FLUSH_S)
        boot.narrate_clean_exit(narrator)
        _exit(EXIT_OK)

    @quart.before_serving
    async def start_worker() -> None:
        for name in HYPERCORN_LOGGERS:  # "Running on ..." and the rest in our format
            route_logger(logging.getLogger(name), narrator)
        quart.nursery.start_soon(run_then_exit)
        if threading.current_thread() is threading.main_thread():
            await quart.nursery.start(boot.watch_signals, worker.service, narrator)

    @quart.after_serving
    async def stop_worker() -> None:
        # Hypercorn has stopped accepting and waited its graceful timeout; end what is left.
        with trio.move_on_after(config.shutdown_deadline_s + config.drain_timeout_s + 1.5):
            await worker.shutdown("hypercorn is shutting down")
        boot.narrate_clean_exit(narrator)

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
