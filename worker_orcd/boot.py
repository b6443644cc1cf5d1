"""One process boot for `worker-orcd` and `hypercorn ... worker_orcd.asgi:app` (and pool managers).

Everything that is process policy rather than worker logic happens here, once, so both entry
points behave the same:

- GC: off from the first moment of the startup until the loader has frozen what is alive
  (actors.loader turns it back on): imports and the tokenizer's tables make ~60 K long-lived
  objects and hardly any garbage, yet ~230 collections passed over them (~70 ms of GIL).
- CUDA warm-up: the driver and the primary context start on a side thread (GIL released) while
  the rest is imported (runtime.backends.CudaWarmup); the engine registry learns of the CUDA
  engine (worker_orcd.engines).
- Logs: one narrator (`--log-format`, `--log-level`, `--log-prompts`) that every line goes
  through, Python's own loggers, warnings and uncaught exceptions included, so every line
  passes redaction (W-1902).
- Signals: the first SIGTERM/SIGINT/SIGHUP asks the service to shut down, exactly like POST /shutdown;
  repeats are narrated and ignored (`watch_signals`).
- Crashes: narrated with their code, then exit status 1 (`narrate_crash`).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable

import attrs
import trio

from actors.http import route_logger
from actors.service import WorkerService
from actors.supervisor import Worker, model_name, narrate_startup
from api.app import create_app
from api.guard import ConnectionGuard
from runtime.backends import CudaWarmup, pick_backend
from runtime.cli import EXIT_CRASH
from runtime.config import WorkerConfig
from runtime.errors import describe, first_error
from runtime.narration import Narrator
from runtime.redaction import Redactor, set_log_hash_key
from worker_orcd import early_signals, engines
from worker_orcd.preflight import check_model_file

SIGNALS = early_signals.SHUTDOWN_SIGNALS


@attrs.define
class Process:
    """What `start_process` changed, so that `finish` can give it back (in-process callers)."""

    config: WorkerConfig
    narrator: Narrator
    warmup: CudaWarmup | None = None
    _undo: list[Callable[[], None]] = attrs.field(factory=list)

    def finish(self) -> None:
        """After the worker returned (trio.run is over): release what the startup took."""
        if self.warmup is not None:
            self.warmup.release()  # the engine is closed by now
        while self._undo:
            self._undo.pop()()


def make_narrator(config: WorkerConfig, model: str | None = None) -> Narrator:
    return Narrator(
        config.worker_id,
        model=model,
        min_level=config.log_level,
        fmt=config.log_format,
        redactor=Redactor(mark_only=config.log_prompts),
    )


def start_process(config: WorkerConfig) -> Process:
    """The first thing an entry point does: GC off, CUDA warm-up, engines, logs, hooks."""
    set_log_hash_key(config.log_hash_key)  # before the first fingerprint (REL-6)
    process = Process(config, make_narrator(config))
    if gc.isenabled():
        gc.disable()
        process._undo.append(gc.enable)
    if config.backend != "cpu":
        process.warmup = CudaWarmup.start(config.gpu_device)
    engines.register()
    _route_python_output(process)
    return process


def _route_python_output(process: Process) -> None:
    """Python's loggers, warnings and uncaught exceptions become narration (and pass redaction)."""
    narrator = process.narrator.child(actor="python")
    root = logging.getLogger()
    saved = (
        list(root.handlers),
        root.level,
        list(root.filters),
        sys.excepthook,
        threading.excepthook,
    )
    route_logger(root, narrator, actor="python").setLevel(logging.WARNING)
    logging.captureWarnings(True)

    def crash_hook(kind: str):
        def hook(*args) -> None:
            error = args[1] if kind == "main" else args[0].exc_value
            where = (
                ""
                if kind == "main"
                else f" in thread {args[0].thread.name if args[0].thread else '?'}"
            )
            narrator.emit(
                "uncaught_exception",
                level="error",
                human=f"Uncaught exception{where}: {type(error).__name__}: {error}",
                exception=type(error).__name__,
            )

        return hook

    sys.excepthook = crash_hook("main")
    threading.excepthook = crash_hook("thread")

    def undo() -> None:
        root.handlers, root.level, root.filters = saved[0], saved[1], saved[2]
        sys.excepthook, threading.excepthook = saved[3], saved[4]
        logging.captureWarnings(False)

    process._undo.append(undo)


def build_worker(process: Process, *, via: str) -> tuple[Worker, ConnectionGuard]:
    """Model path, backend, startup narration, the worker and the app serving its service.

    Raises `WorkerError` when the worker cannot even start (no model file, no such backend).
    """
    config = process.config
    path = config.resolved_model_path()
    check_model_file(path)  # before the startup line and before anything listens (REL-9)
    process.narrator = process.narrator.child(model=model_name(path))
    backend = pick_backend(config.backend)
    if backend == "cpu" and process.warmup is not None:
        process.warmup.release()  # "auto" found no usable PyCUDA: give the context back now
    narrate_startup(process.narrator, config, path, backend, via=via)
    worker = Worker(attrs.evolve(config, model=path), backend=backend, narrator=process.narrator)
    return worker, create_app(worker.service)


async def watch_signals(
    service: WorkerService, narrator: Narrator, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """The first SIGTERM/SIGINT/SIGHUP shuts the worker down (as POST /shutdown); repeats are
    ignored. Signals recorded while the process was starting (`early_signals`) count too.

    The signals are set to "ignore" before the receiver opens, so that is what they fall back
    to when it closes (trio restores the handler found on entry and re-raises signals it had
    not read yet): a second Ctrl-C or `kill` during the final instant of the shutdown, or after
    `trio.run` returned, can neither kill the process nor turn exit 0 into a KeyboardInterrupt.
    Runs until cancelled; the signals stay ignored afterwards (the process is exiting).
    """
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    with trio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        for signum in early_signals.take():
            _on_signal(service, narrator, signum, early=True)
        async for signum in signals:
            _on_signal(service, narrator, signum)


def _on_signal(service: WorkerService, narrator: Narrator, signum: int, early=False) -> None:
    name = signal.Signals(signum).name
    when = " during start-up" if early else ""
    if service.request_shutdown(f"received {name}"):
        narrator.emit(
            "signal",
            actor="supervisor",
            human=f"Received {name}{when}; shutting down.",
            signal=name,
        )
    else:
        narrator.emit(
            "signal_ignored",
            level="warning",
            actor="supervisor",
            human=f"Received {name}{when} again; already shutting down.",
            signal=name,
        )


def narrate_crash(narrator: Narrator, error: BaseException) -> None:
    """The last two lines of a worker whose actor crashed: what broke (with its code), then exit."""
    cause = first_error(error)
    narrator.emit(
        "error",
        level="error",
        actor="supervisor",
        human=f"An actor crashed; the worker stops: {describe(error)}",
        code=str(getattr(cause, "code", "INTERNAL")),
        exception=type(cause).__name__,
    )
    narrator.emit(
        "shutdown",
        level="error",
        actor="supervisor",
        human="Worker stopped after a crash.",
        exit_code=EXIT_CRASH,
    )


def narrate_clean_exit(narrator: Narrator) -> None:
    narrator.emit("shutdown", actor="supervisor", human="Worker stopped cleanly.", exit_code=0)
