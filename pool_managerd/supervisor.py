"""The pool's actor tree: HTTP API, signal watcher, and the nursery every worker task runs in.

    run_pool
      root nursery
        http          hypercorn (actors.http.run_http): started first, its bound port becomes
                      the workers' callback URL (so `--port 0` works)
        workers       Pool._run_worker tasks and preloads, started by the API
      signals         SIGTERM/SIGINT -> Pool.shutdown() -> HTTP stops -> return

The pool exits 0 after a clean shutdown: every worker stopped (each through its own escalation,
all in parallel), then the HTTP server.
"""

from __future__ import annotations

import signal

import trio

from actors.http import run_http
from pool_managerd.api import create_app
from pool_managerd.pool import READY_PATH, Pool

HTTP_STOP_TIMEOUT_S = 5.0


async def run_pool(pool: Pool, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = pool.config
    stopped = trio.Event()
    http_done = trio.Event()

    async def serve_http(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_http(
                create_app(pool),
                host=config.host,
                port=config.port,
                narrator=pool.narrator,
                shutdown_trigger=stopped.wait,
                task_status=task_status,
            )
        finally:
            http_done.set()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as root:
            pool._nursery = root
            binds = await root.start(serve_http)
            port = int(binds[0].rsplit(":", 1)[1])
            host = config.callback_host()
            host = f"[{host}]" if ":" in host else host
            pool.callback_url = f"http://{host}:{port}{READY_PATH}"
            pool.narrator.emit(
                "pool_ready",
                target=config.pool_id,
                human=f"Pool {config.pool_id} ready on {binds[0]}: "
                f"{len(pool.inventory.devices)} device(s), {pool.inventory.backend} workers.",
                binds=binds,
                devices=[str(d) for d in pool.inventory.devices],
            )
            task_status.started(binds)
            async for signum in signals:
                pool.narrator.emit(
                    "signal",
                    target=config.pool_id,
                    human=f"Received {signal.Signals(signum).name}; stopping the pool.",
                    signal=signal.Signals(signum).name,
                )
                break
            await pool.shutdown()
            stopped.set()  # hypercorn finishes its connections and returns
            with trio.move_on_after(HTTP_STOP_TIMEOUT_S):
                await http_done.wait()
            await pool.http.aclose()
            root.cancel_scope.cancel()  # preloads still reading: their threads are abandoned
