"""`pool-managerd` (and `python -m pool_managerd`): flags, the inventory, the pool, an exit status.

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT: every worker stopped first), 1 when the
pool cannot start (no usable device for the backend asked for, the port taken) or crashed,
2 for bad flags. The pool's log is stderr, one JSON narration event per line; its workers'
lines are interleaved, each tagged with its worker's id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pool_managerd.config import BACKENDS, PoolConfig, default_pool_id

EXIT_OK, EXIT_CRASH, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    d = PoolConfig.__attrs_attrs__  # the defaults live in one place: PoolConfig
    parser = argparse.ArgumentParser(
        prog="pool-managerd",
        description="Start, stop and watch worker-orcd processes on this host; keep models hot.",
    )
    add = parser.add_argument
    add("--host", default=d.host.default, help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=d.port.default, help="TCP port (default 9200; 0 picks one)")
    add("--pool-id", default=None, help=f"this pool's name (default {default_pool_id()})")
    add("--backend", choices=BACKENDS, default="auto",
        help="backend of the workers it starts: auto = cuda where NVML finds a GPU, else cpu")  # fmt: skip
    add("--ready-timeout", type=float, default=d.ready_timeout_s.default,
        help="seconds a worker has to call back ready before it is killed (default 60)")  # fmt: skip
    add("--health-interval", type=float, default=d.health_interval_s.default,
        help="seconds between health polls of a ready worker (default 10)")  # fmt: skip
    add("--health-timeout", type=float, default=d.health_timeout_s.default,
        help="seconds a health poll may take (default 5)")  # fmt: skip
    add("--health-misses", type=int, default=d.health_misses.default,
        help="missed polls in a row that fail a worker (default 3)")  # fmt: skip
    add("--shutdown-grace", type=float, default=d.shutdown_grace_s.default,
        help="on stop, seconds after POST /shutdown before SIGTERM (default 10)")  # fmt: skip
    add("--kill-after", type=float, default=d.kill_after_s.default,
        help="on stop, seconds after SIGTERM before SIGKILL (default 30)")  # fmt: skip
    add("--max-context", type=int, default=None,
        help="KV-cache tokens of each worker (default: the worker's own, min(2048, the model's))")  # fmt: skip
    add("--max-batch", type=int, default=d.max_batch.default,
        help="sequence slots of each worker, each a KV cache (default 16; in the estimate too)")  # fmt: skip
    add("--memory-limit", type=int, default=None,
        help="bytes of each device's memory the pool may hand out (default: all of it)")  # fmt: skip
    add("--hf-cache", type=Path, default=None,
        help="huggingface_hub cache folder for hf: model refs (default: the library's)")  # fmt: skip
    add("--hf-download", action="store_true",
        help="let hf: refs download what the cache lacks (default: cache only)")  # fmt: skip
    return parser


def config_from_args(args: argparse.Namespace) -> PoolConfig:
    kwargs = {
        "host": args.host,
        "port": args.port,
        "backend": args.backend,
        "ready_timeout_s": args.ready_timeout,
        "health_interval_s": args.health_interval,
        "health_timeout_s": args.health_timeout,
        "health_misses": args.health_misses,
        "shutdown_grace_s": args.shutdown_grace,
        "kill_after_s": args.kill_after,
        "max_context": args.max_context,
        "max_batch": args.max_batch,
        "memory_limit_bytes": args.memory_limit,
        "hf_cache": args.hf_cache,
        "hf_download": args.hf_download,
    }
    if args.pool_id is not None:
        kwargs["pool_id"] = args.pool_id
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {args.port}")
    return PoolConfig(**kwargs)


def run(config: PoolConfig) -> int:
    import trio

    from pool_managerd.inventory import Inventory, NvmlUnavailable
    from pool_managerd.pool import Pool
    from pool_managerd.supervisor import run_pool
    from runtime.narration import Narrator

    narrator = Narrator(config.pool_id)
    try:
        inventory = Inventory.discover(config.backend)
    except NvmlUnavailable as error:
        narrator.emit(
            "error",
            level="error",
            actor="inventory",
            human=f"Cannot start: --backend cuda but no GPU is usable ({error}).",
        )
        return EXIT_CRASH
    for device in inventory.devices.values():
        memory = inventory.memory(device)
        narrator.emit(
            "device",
            actor="inventory",
            target=str(device.id),
            human=f"Device {device.id}: {device.name}, {memory.total} bytes, {memory.free} free.",
            kind=device.kind,
            total_bytes=memory.total,
            free_bytes=memory.free,
            uuid=device.uuid,
        )
    pool = Pool(config, inventory, narrator)
    try:
        trio.run(run_pool, pool)
    except BaseException as error:
        narrator.emit(
            "error",
            level="error",
            actor="supervisor",
            human=f"The pool stopped after a crash: {_describe(error)}",
        )
        return EXIT_CRASH
    finally:
        inventory.close()
    narrator.emit("shutdown", actor="supervisor", human="Pool stopped cleanly.", exit_code=EXIT_OK)
    return EXIT_OK


def _describe(error: BaseException) -> str:
    """The first leaf of a (nested) exception group, with its type."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {getattr(error, 'message', None) or error}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"pool-managerd: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
