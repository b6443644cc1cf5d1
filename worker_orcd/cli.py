"""`worker-orcd` (and `python -m worker_orcd`): parse flags, boot, run the actor tree, exit.

`worker-orcd pull NAME` installs a catalog model instead (`runtime.models.pull_cli`).
Exit status: 0 after a clean drain (POST /shutdown, SIGTERM/SIGINT), 1 when an actor crashed,
the model failed to load or the ready callback was refused, 2 for bad flags.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from runtime.cli import EXIT_CRASH, EXIT_OK, EXIT_USAGE  # light: flags and exit codes only
from worker_orcd import early_signals

__all__ = ["EXIT_CRASH", "EXIT_OK", "EXIT_USAGE", "main", "run"]

if TYPE_CHECKING:
    from runtime.config import WorkerConfig
    from worker_orcd import boot

# Everything else is imported inside the functions: `main` records shutdown signals first
# (early_signals), and the imports take a second or more (REL-9).


def run(config: WorkerConfig) -> int:
    """Start the worker with `config` in this process; returns the exit status."""
    from worker_orcd import boot

    process = boot.start_process(config)
    try:
        return _run(process)
    finally:
        process.finish()


def _run(process: boot.Process) -> int:
    import trio

    from actors.http import ListenError
    from actors.supervisor import run_worker
    from runtime.errors import WorkerError, first_error
    from worker_orcd import boot

    def cannot_start(error: WorkerError) -> int:
        process.narrator.emit(
            "error",
            level="error",
            actor="supervisor",
            human=f"Cannot start: {error.message}",
            code=str(error.code),
        )
        return EXIT_CRASH

    try:
        worker, app = boot.build_worker(process, via="from the command line")
    except WorkerError as error:
        return cannot_start(error)

    async def main() -> None:
        # The signal watcher lives in a nursery around the worker's, so it keeps receiving
        # (and ignoring repeats) until HTTP has stopped too.
        async with trio.open_nursery() as outer:
            await outer.start(boot.watch_signals, worker.service, worker.narrator)
            await run_worker(worker, app)
            outer.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseException as error:  # an actor crashed: say which and how, then exit non-zero
        if isinstance(first_error(error), ListenError):  # nothing ran: not a crash (REL-9)
            return cannot_start(first_error(error))
        if not isinstance(first_error(error), KeyboardInterrupt):
            boot.narrate_crash(worker.narrator, error)
        return EXIT_CRASH
    boot.narrate_clean_exit(worker.narrator)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["pull"]:
        early_signals.install()
    from runtime.cli import parse_config

    if argv[:1] == ["pull"]:  # `worker-orcd pull NAME`: install a catalog model, serve nothing
        from runtime.models.pull_cli import pull_main

        return pull_main(argv[1:])
    config = parse_config(argv)
    if isinstance(config, int):
        return config
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
