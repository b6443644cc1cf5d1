"""Load-to-ready phases that run on the CPU whatever the backend: GGUF header parse, the file's
checks (weight plan), tokenizer construction, chat-template compile (load time is a target,
decision 0011; the GPU upload and kernel loading come on top).

    .venv/bin/python bench/bench_load_phases.py [MODEL ...] [--runs 5]

MODEL is a catalog name (resolved through the cache, `worker-orcd pull NAME`) or a path;
default: all three catalog models. Prints the median and the minimum of `--runs` cold runs per
phase (each run parses the file anew in this process; the OS page cache is warm).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from runtime.chat import compile_chat_template  # noqa: E402
from runtime.gguf_file import open_gguf  # noqa: E402
from runtime.gguf_header import read_header  # noqa: E402
from runtime.models.catalog import CATALOG, resolve_model  # noqa: E402
from runtime.tokenizer import Tokenizer  # noqa: E402


def one_run(path: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    read_header(path)
    t1 = time.perf_counter()
    model = open_gguf(path)  # header again + tensor table + weight plan
    t2 = time.perf_counter()
    tokenizer = Tokenizer.from_metadata(model.metadata)
    t3 = time.perf_counter()
    template = model.metadata.get("tokenizer.chat_template")
    compile_chat_template.cache_clear()
    if template:
        compile_chat_template(template)
    t4 = time.perf_counter()
    tokenizer.encode("def fibonacci(n):\n    return n")
    t5 = time.perf_counter()
    model.close()
    return {
        "header parse": t1 - t0,
        "open_gguf (header + plan)": t2 - t1,
        "tokenizer": t3 - t2,
        "chat template": t4 - t3,
        "first encode": t5 - t4,
        "total (open + tokenizer + template)": t4 - t1,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(CATALOG))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for name in args.models:
        path = resolve_model(name)
        runs = [one_run(path) for _ in range(args.runs)]
        print(f"{name} ({path.name}):")
        for phase in runs[0]:
            values = [r[phase] * 1000 for r in runs]
            print(
                f"  {phase:38s} median {statistics.median(values):7.1f} ms  min {min(values):7.1f} ms"
            )


if __name__ == "__main__":
    main()
