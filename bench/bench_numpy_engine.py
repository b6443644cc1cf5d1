"""Prefill and decode speed of the numpy reference engine (llama-bench's pp / tg tests).

    .venv/bin/python bench/bench_numpy_engine.py [--model PATH] [--pp 128] [--tg 64] [--runs 3]

pp: one batched prefill of `--pp` tokens into an empty cache (tokens/s = pp / seconds).
tg: `--tg` decode steps after a 1-token prompt, greedy, each step = engine.step + sampling
(tokens/s = tg / seconds). Like llama-bench, token ids are arbitrary (the speed of a forward pass
does not depend on them). Each test runs `--runs` times after one warm-up; mean and spread are
printed with the machine's CPU count and model and the BLAS thread settings.
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

from runtime.default_model import default_model_path  # noqa: E402
from runtime.gguf_file import open_gguf  # noqa: E402
from runtime.numpy_engine import NumpyEngine  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_pp(engine: NumpyEngine, n: int) -> float:
    tokens = [(7919 * i + 13) % engine.config.vocab_size for i in range(n)]
    engine.reset()
    t0 = time.perf_counter()
    engine.prefill(tokens)
    return n / (time.perf_counter() - t0)


def bench_tg(engine: NumpyEngine, n: int) -> float:
    engine.reset()
    engine.prefill([504])
    history = [504]
    t0 = time.perf_counter()
    for i in range(n):
        token = engine.sample(GREEDY, history, i)
        history.append(token)
        engine.step(token)
    return n / (time.perf_counter() - t0)


def report(name: str, rates: list[float]) -> None:
    spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
    print(
        f"{name:>6}: {statistics.mean(rates):8.1f} ± {spread:5.1f} tokens/s   runs: "
        + ", ".join(f"{r:.1f}" for r in rates)
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF file (default: embedded model)")
    p.add_argument("--pp", type=int, default=128, help="prompt tokens for the prefill test")
    p.add_argument("--tg", type=int, default=64, help="tokens for the decode test")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    path = args.model or default_model_path()
    blas_threads = {
        k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ
    }
    print(
        f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"{cpu_model()}; BLAS threads env: {blas_threads or 'default'}"
    )
    t0 = time.perf_counter()
    with open_gguf(path) as model:
        engine = NumpyEngine.load(model, max_context=max(args.pp, args.tg + 1))
        quant = model.quant_kind
    print(
        f"model: {path.name} ({quant} -> fp32, {engine.memory_bytes() / 2**20:.0f} MiB), "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )
    bench_pp(engine, args.pp)  # warm-up: page in weights, BLAS thread pool
    bench_tg(engine, 8)
    report(f"pp{args.pp}", [bench_pp(engine, args.pp) for _ in range(args.runs)])
    report(f"tg{args.tg}", [bench_tg(engine, args.tg) for _ in range(args.runs)])
    engine.close()


if __name__ == "__main__":
    main()
