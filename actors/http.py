"""The HTTP front-end actor: hypercorn serving the quart-trio app inside the worker's nursery.

`started(binds)` comes as soon as the socket listens, long before the model is loaded, so
`/health` can say `loading`. Hypercorn's own log lines are turned into narration events
(`NarrationHandler`), so stderr keeps one format (`--log-format`) and passes redaction; the
boot routes the `hypercorn` command's loggers and Python's root logger the same way.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from runtime.errors import WorkerError
from runtime.narration import Narrator

ACTOR = "http"
GRACEFUL_TIMEOUT_S = 1.0  # after our own drain, connections still open get this long


class ListenError(WorkerError):
    """The socket could not be bound: the worker cannot start (REL-9)."""


class NarrationHandler(logging.Handler):
    """A `logging` handler whose records become narration events (`server_log`)."""

    def __init__(self, narrator: Narrator):
        super().__init__()
        self.narrator = narrator

    def emit(self, record: logging.LogRecord) -> None:
        level = (
            "error"
            if record.levelno >= logging.ERROR
            else "warning"
            if record.levelno >= logging.WARNING
            else "debug"
        )
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f" ({type(error).__name__}: {error})"
        self.narrator.emit("server_log", level=level, human=message[:500], logger=record.name)


class _Forward(logging.Filter):
    """A logger filter that narrates each record and drops it for the logger's own handlers."""

    def __init__(self, handler: NarrationHandler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.handle(record)
        return False


def route_logger(logger: logging.Logger, narrator: Narrator, actor: str = ACTOR) -> logging.Logger:
    """Make everything `logger` writes narration, and only narration.

    Its handlers are replaced (for records propagated from child loggers) and a filter on the
    logger itself forwards its own records: the filter survives a later `logger.handlers = ...`
    (the `hypercorn` command configures its loggers again when it first logs).
    """
    handler = NarrationHandler(narrator.child(actor=actor))
    logger.handlers = [handler]
    logger.propagate = False
    for old in [f for f in logger.filters if isinstance(f, _Forward)]:
        logger.removeFilter(old)
    logger.addFilter(_Forward(handler))
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return logger


def narrated_logger(narrator: Narrator) -> logging.Logger:
    """A logger of this worker's own (not in `logging`'s registry, so workers never share one)."""
    return route_logger(logging.Logger(f"worker_orcd.hypercorn.{narrator.worker_id}"), narrator)


class WorkerHypercornConfig(Config):
    """Hypercorn's config, plus a write timeout on the sockets it listens on (REL-4).

    Hypercorn writes with cancellation shielded, so a client that stops reading would hold its
    connection (and its stream) until TCP gives up, which can be never. `TCP_USER_TIMEOUT` on
    the listening socket (inherited by every accepted one) makes the kernel fail a write that
    has not progressed for `write_timeout_s`; hypercorn then reports the client gone, and the
    job (if still running) is cancelled like any disconnect.
    """

    write_timeout_s: float | None = None

    def create_sockets(self):
        sockets = super().create_sockets()
        for sock in sockets.secure_sockets + sockets.insecure_sockets:
            tune_listening_socket(sock, self.write_timeout_s)
        return sockets


def tune_listening_socket(sock: socket.socket, write_timeout_s: float | None) -> None:
    timeout_option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
    if write_timeout_s and timeout_option is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, timeout_option, int(write_timeout_s * 1000))


def hypercorn_config(
    host: str, port: int, narrator: Narrator, *, write_timeout_s: float | None = None
) -> Config:
    config = WorkerHypercornConfig()
    config.write_timeout_s = write_timeout_s
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.accesslog = None  # requests are narrated by the app where they matter
    config.errorlog = narrated_logger(narrator)
    config.keep_alive_timeout = 75  # clients such as benchmarks reuse connections
    return config


async def run_http(
    app,
    *,
    host: str,
    port: int,
    narrator: Narrator,
    shutdown_trigger: Callable[[], Awaitable[None]],
    write_timeout_s: float | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger()` returns; `started` with the bound URLs (port 0 resolved)."""
    config = hypercorn_config(host, port, narrator, write_timeout_s=write_timeout_s)
    async with trio.open_nursery() as nursery:
        try:
            binds = await nursery.start(
                functools.partial(serve, app, config, shutdown_trigger=shutdown_trigger)
            )
        except* OSError as group:  # the port is taken, the address is not ours, ...
            error = group.exceptions[0]
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            why = getattr(error, "strerror", None) or str(error)
            raise ListenError(f"cannot listen on {config.bind[0]}: {why}") from error
        narrator.emit(
            "listening",
            actor=ACTOR,
            target=binds[0],
            human=f"Listening on {', '.join(binds)}.",
            binds=binds,
        )
        task_status.started(binds)
