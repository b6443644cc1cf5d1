"""`worker-orcd` (and `python -m runtime.cli`): parse flags, run the actor tree, exit with a status.

`worker-orcd pull NAME` installs a catalog model instead (runtime.models.pull_cli).

Exit status: 0 after a clean drain (SIGTERM/SIGINT), 1 when an actor crashed or the model failed
to load, 2 for bad flags. Everything the process says goes to stderr as narration JSON lines.
"""

from __future__ import annotations

import argparse
import gc
import sys

import attrs

from runtime.config import BACKENDS, DEFAULT_MAX_CONTEXT, WorkerConfig, default_worker_id
from runtime.errors import WorkerError
from runtime.narration import Narrator

EXIT_OK, EXIT_CRASH, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-orcd",
        description="Serve one GGUF model: tokens streamed over HTTP/SSE, cancellable at any time.",
    )
    parser.add_argument(
        "--model",
        help="GGUF file or catalog name to serve: smollm2-135m (the default, embedded), "
        "qwen2.5-coder-0.5b, gemma3-270m (install those with `worker-orcd pull NAME`)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port (default 8080; 0 picks one)"
    )
    parser.add_argument(
        "--worker-id", default=None, help="name in every log line (default: host and pid)"
    )
    parser.add_argument("--gpu-device", type=int, default=0, help="CUDA device ordinal (default 0)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto picks cuda where a GPU and PyCUDA exist, else cpu (default auto)",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        help=f"KV-cache tokens: prompt + max_tokens limit (default {DEFAULT_MAX_CONTEXT}, capped by the model's)",
    )
    parser.add_argument(
        "--residency-interval",
        type=float,
        default=30.0,
        help="seconds between residency checks (default 30)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=16,
        help="jobs that may wait behind the running one (default 16)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=3.0,
        help="on SIGTERM, seconds streams get to end (default 3)",
    )
    parser.add_argument(
        "--max-vram-bytes",
        type=int,
        default=None,
        help="cuda backend: cap on the VRAM the model may hold; over it the load fails "
        "with INSUFFICIENT_VRAM (default: no cap but the card's free memory)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig.from_mapping(
        {
            "model": args.model,
            "host": args.host,
            "port": str(args.port),
            "worker_id": args.worker_id or default_worker_id(),
            "gpu_device": str(args.gpu_device),
            "backend": args.backend,
            "max_context": None if args.max_context is None else str(args.max_context),
            "residency_interval_s": str(args.residency_interval),
            "queue_size": str(args.queue_size),
            "drain_timeout_s": str(args.drain_timeout),
            "max_vram_bytes": None if args.max_vram_bytes is None else str(args.max_vram_bytes),
        }
    )


def first_error(error: BaseException) -> BaseException:
    """The first non-cancellation leaf of a (possibly nested) exception group."""
    import trio  # here, not at the top: `--help` and the startup's first steps need no trio

    while isinstance(error, BaseExceptionGroup):
        leaves = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)] or list(
            error.exceptions
        )
        error = leaves[0]
    return error


def describe(error: BaseException) -> str:
    error = first_error(error)
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}"


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


def run(config: WorkerConfig) -> int:
    """Start the worker with `config`; returns the exit status."""
    from runtime.backends import CudaWarmup

    # Load time to ready is a target (decision 0011), so the startup avoids work it can skip:
    # - The CUDA driver and the primary context start on a side thread (GIL released) while the
    #   actor tree is imported below, instead of after HTTP listens.
    # - The collector is off until the loader has frozen what is alive (actors.loader turns it
    #   back on): imports and the tokenizer's tables make ~60 K long-lived objects and hardly any
    #   garbage (~3 K objects), yet ~230 collections passed over them (~70 ms of GIL).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    warmup = CudaWarmup.start(config.gpu_device) if config.backend != "cpu" else None
    try:
        return _run(config, warmup)
    finally:
        if warmup is not None:
            warmup.release()  # the engine is closed by now (trio.run has returned)
        if gc_was_enabled:
            gc.enable()


def _run(config: WorkerConfig, warmup) -> int:
    import trio

    from actors.supervisor import Worker, model_name, narrate_startup, run_worker
    from runtime.backends import pick_backend

    narrator = Narrator(config.worker_id)
    try:
        path = config.resolved_model_path()
        narrator = Narrator(config.worker_id, model=model_name(path))
        backend = pick_backend(config.backend)
        if backend == "cpu" and warmup is not None:
            warmup.release()  # "auto" found no usable PyCUDA: give the context back now
    except WorkerError as error:
        narrator.emit(
            "error",
            level="error",
            actor="supervisor",
            human=f"Cannot start: {error.message}",
            code=str(error.code),
        )
        return EXIT_CRASH
    narrate_startup(narrator, config, path, backend, via="from the command line")
    worker = Worker(attrs.evolve(config, model=path), backend=backend, narrator=narrator)
    try:
        trio.run(run_worker, worker)
    except BaseException as error:  # an actor crashed: say which and how, then exit non-zero
        if isinstance(first_error(error), KeyboardInterrupt):
            return EXIT_CRASH
        narrate_crash(narrator, error)
        return EXIT_CRASH
    narrator.emit(
        "shutdown", actor="supervisor", human="Worker stopped cleanly.", exit_code=EXIT_OK
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pull"]:
        from runtime.models.pull_cli import pull_main

        return pull_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"worker-orcd: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
