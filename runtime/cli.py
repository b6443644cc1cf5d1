"""The `worker-orcd` command line: flags -> `WorkerConfig` (the process itself: `worker_orcd.cli`).

This module only describes and parses the flags, so it stays in the pure core (it imports
nothing that runs a worker); `worker_orcd.cli.main` parses with it and boots the process.
Exit status: 0 after a clean drain (POST /shutdown, SIGTERM/SIGINT), 1 when an actor crashed,
the model failed to load or the ready callback was refused, 2 for bad flags. Everything the
process says goes to stderr as narration lines (`--log-format json|text`).
`worker-orcd pull NAME` installs a catalog model instead (`runtime.models.pull_cli`).
"""

from __future__ import annotations

import argparse
import os
import sys

from runtime.config import (
    BACKENDS,
    BODY_TIMEOUT_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONTEXT,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_BATCH,
    WRITE_TIMEOUT_S,
    WorkerConfig,
    default_worker_id,
)

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
        "--tokenizer",
        default=None,
        help="a Hugging Face tokenizer.json to use instead of the tokenizer in the GGUF file "
        "(BOS/EOS from a tokenizer_config.json beside it, else from the GGUF)",
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
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"sequences decoded together, 1..{MAX_BATCH}; more wait in the queue "
        f"(default {DEFAULT_MAX_BATCH})",
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
        help="jobs that may wait while --max-batch run; more get 503 BUSY (default 16)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=3.0,
        help="after the jobs ended on shutdown, seconds streams get to flush (default 3)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        help="seconds a request body may take to arrive after its head; slower bodies get "
        f"408 and the connection closed (default {BODY_TIMEOUT_S:g}; bodies over 1 MiB get 413)",
    )
    parser.add_argument(
        "--write-timeout",
        type=float,
        default=WRITE_TIMEOUT_S,
        help="seconds a response write may make no progress (the client reads nothing) "
        f"before the connection is dropped and its job cancelled (default {WRITE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--shutdown-deadline",
        type=float,
        default=5.0,
        help="POST /shutdown or SIGTERM: seconds the running job may go on before it is "
        "cancelled (default 5; 0 cancels at once)",
    )
    parser.add_argument(
        "--max-vram-bytes",
        type=int,
        default=None,
        help="cuda backend: cap on the VRAM the model may hold; over it the load fails "
        "with INSUFFICIENT_VRAM (default: no cap but the card's free memory)",
    )
    parser.add_argument(
        "--check-tensors",
        action="store_true",
        help="before loading, check every weight for NaN and infinity (a full pass over the file)",
    )
    parser.add_argument(
        "--callback-url",
        default=None,
        help="once ready, POST {worker_id, model_ref, vram_bytes, uri, ...} here; a refused "
        "or failed callback (3 attempts) ends the worker with exit 1",
    )
    parser.add_argument(
        "--model-ref",
        default=None,
        help="the model's name in the ready callback (default: file: + the model's path)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("WORKER_ORCD_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but GET /health (default: "
        "$WORKER_ORCD_API_KEY, else none; the environment keeps it out of `ps`)",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names answered (403 otherwise), * for any (default: "
        "localhost,127.0.0.1,::1 when --host is a loopback address, else any)",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="json", help="stderr lines (default json)"
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe level logged"
    )
    parser.add_argument(
        "--log-hash-key",
        default=os.environ.get("WORKER_ORCD_LOG_HASH_KEY"),
        help="key of the HMAC that stands in for prompts in the logs; give workers the same "
        "one to match prompts across their logs (default: $WORKER_ORCD_LOG_HASH_KEY, else "
        "random per process)",
    )
    parser.add_argument(
        "--log-prompts",
        action="store_true",
        help="DEBUGGING ONLY: log prompt and output text (every such line says so); by "
        "default logs carry only their SHA-256 and length",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig.from_mapping(
        {
            "model": args.model,
            "tokenizer": args.tokenizer,
            "host": args.host,
            "port": str(args.port),
            "worker_id": args.worker_id or default_worker_id(),
            "gpu_device": str(args.gpu_device),
            "backend": args.backend,
            "max_context": None if args.max_context is None else str(args.max_context),
            "max_batch": str(args.max_batch),
            "residency_interval_s": str(args.residency_interval),
            "queue_size": str(args.queue_size),
            "drain_timeout_s": str(args.drain_timeout),
            "body_timeout_s": str(args.body_timeout),
            "write_timeout_s": str(args.write_timeout),
            "api_key": args.api_key,
            "log_hash_key": args.log_hash_key,
            "allowed_hosts": args.allowed_hosts,
            "max_vram_bytes": None if args.max_vram_bytes is None else str(args.max_vram_bytes),
            "check_tensors": "1" if args.check_tensors else None,
            "shutdown_deadline_s": str(args.shutdown_deadline),
            "callback_url": args.callback_url,
            "model_ref": args.model_ref,
            "log_format": args.log_format,
            "log_level": args.log_level,
            "log_prompts": str(args.log_prompts),
        }
    )


def parse_config(argv: list[str] | None = None) -> WorkerConfig | int:
    """The config the flags describe, or EXIT_USAGE after saying what is wrong on stderr."""
    args = build_parser().parse_args(argv)  # exits 2 itself for unknown flags and bad choices
    try:
        return config_from_args(args)
    except ValueError as error:
        print(f"worker-orcd: {error}", file=sys.stderr)
        return EXIT_USAGE
