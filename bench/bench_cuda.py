"""Engine-level GPU benchmark: decode tg128 / tg512 and prefill pp512 tokens per second.

    python bench/bench_cuda.py [--model PATH | --family qwen2] [--ctx 2048] [--reps 5]
                               [--no-graph] [--config NAME:key=value,... ...]

Without --model it uses $WORKER_ORCD_MODEL, else a synthetic model with the exact shapes and
types of --family's real model (tools/make_synthetic_gguf.py: smollm2, the default; qwen2 for
Qwen2.5-Coder-0.5B Q4_K_M; gemma3 for Gemma-3-270M Q4_K_M); kernel time does not depend on the
weights.
Decode is measured as the generation loop runs it: n decode steps from an empty cache, the first
on token 1, each later one on the token sampled (on the GPU, the id copied back and waited for)
after the one before; "step only" is llama-bench's tg (n one-token decodes, no sampling, one wait
at the end). Neither runs a prefill pass (an eager 1-token prefill used to add ~2 ms of PyCUDA
launches to tg128's time). Prefill: one 512-token pass from an empty cache (pp512). Each
figure is the median of --reps runs after a warm-up run.

--config runs the benchmark once per configuration in the same process, so levers compare on the
same card in the same run: keys pdl (0/1, programmatic dependent launch in the decode step),
mm (prefill matmul kernel: tc32 or tcs), batched (0/1, the matvec's batched-load build), graph
(0/1), fuse (0/1), pre (0/1, the matvec's weight preload before the PDL wait), attn (prefill
attention: simt or tc). Example: --config base:pdl=0 --config pdl:pdl=1,mm=tcs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.gguf_file import open_gguf  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    unknown = set(opts) - {"pdl", "mm", "batched", "graph", "fuse", "pre", "attn"}
    if unknown:
        raise SystemExit(f"unknown config keys {sorted(unknown)} in {text!r}")
    return name, opts


def run_config(path: Path, ctx: int, reps: int, opts: dict[str, str]) -> tuple[float, list]:
    import cuda.ops as ops
    import cuda.quant_ops as quant_ops
    from cuda.engine import CudaEngine

    ops.PREFILL_ATTENTION = opts.get("attn", ops.PREFILL_ATTENTION)
    quant_ops.PREFILL_KERNEL = opts.get("mm", quant_ops.PREFILL_KERNEL)
    quant_ops.BATCHED_LOADS = opts.get("batched", str(int(quant_ops.BATCHED_LOADS))) == "1"
    quant_ops.PRELOAD = opts.get("pre", str(int(quant_ops.PRELOAD))) == "1"
    t0 = time.perf_counter()
    with open_gguf(path) as model:
        engine = CudaEngine.load(
            model,
            max_context=ctx,
            use_graph=opts.get("graph", "1") == "1",
            fuse=opts.get("fuse", "1") == "1",
            pdl=opts.get("pdl", "1") == "1",
        )
    load_s = time.perf_counter() - t0
    try:

        def decode(n: int):
            def run():  # n decode steps from an empty cache, each sampled and waited for
                engine.reset()
                engine.step(1)
                for i in range(n - 1):
                    engine.step(engine.sample(GREEDY, (), i))
                engine.sample(GREEDY, (), n)

            return run

        def steps_only(n: int):
            def run():  # llama-bench's tg: n one-token decodes, no sampling, one wait at the end
                engine.reset()
                for _ in range(n):
                    engine.step(1)
                engine.stream.synchronize()

            return run

        def prefill(n: int):
            ids = [(7 * i + 3) % engine.config.vocab_size for i in range(n)]

            def run():
                engine.reset()
                engine.prefill(ids)
                engine.stream.synchronize()

            return run

        rows = []
        for label, fn, n in [
            ("tg128", decode(128), 128),
            ("tg512", decode(512), 512),
            ("tg128 step only", steps_only(128), 128),
            ("pp512", prefill(512), 512),
        ]:
            t = median_time(fn, reps)
            rows.append((label, n / t, 1e3 * t / n))
    finally:
        engine.close()
    return load_s, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=os.environ.get("WORKER_ORCD_MODEL"))
    ap.add_argument("--family", default="smollm2", help="synthetic model without --model")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--config", action="append", default=[], help="NAME:key=value,...")
    args = ap.parse_args()
    import pycuda.driver as drv

    path = args.model
    if path is None or not Path(path).is_file():
        from tools.make_synthetic_gguf import write_synthetic_model

        path = write_synthetic_model(
            Path(tempfile.mkdtemp()) / f"synthetic-{args.family}.gguf", seed=1, family=args.family
        )
    configs = [parse_config(c) for c in args.config] or [
        ("default", {"graph": "0"} if args.no_graph else {})
    ]
    drv.init()
    name = drv.Device(0).name()
    # hold the primary context across engines, so kernels compiled once stay loaded
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    try:
        for label, opts in configs:
            load_s, rows = run_config(path, args.ctx, args.reps, opts)
            print(
                f"device: {name}; model: {Path(path).name}; config {label} {opts}; "
                f"load {load_s:.2f} s"
            )
            print(f"{'test':<18}{'tokens/s':>12}{'ms/token':>10}")
            for test, tps, ms in rows:
                print(f"{test:<18}{tps:>12.1f}{ms:>10.4f}", flush=True)
    finally:
        ctx.pop()


if __name__ == "__main__":
    main()
