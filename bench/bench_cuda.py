"""Engine-level GPU benchmark: decode tg128 / tg512 and prefill pp512 tokens per second.

    python bench/bench_cuda.py [--model PATH] [--ctx 2048] [--reps 5] [--no-graph]

Without --model it uses $WORKER_ORCD_MODEL, else a synthetic model with the default model's
exact shapes and types (tools/make_synthetic_gguf.py; kernel time does not depend on weights).
Decode is measured as the generation loop runs it: sample (on the GPU, the id copied back) then
step, from a 1-token prompt, like llama-bench's tg; "step only" replays the decode step without
sampling, to separate the two. Prefill: one 512-token pass from an empty cache (pp512). Each
figure is the median of --reps runs after a warm-up run.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=os.environ.get("WORKER_ORCD_MODEL"))
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-graph", action="store_true")
    args = ap.parse_args()
    import pycuda.driver as drv

    from cuda.engine import CudaEngine

    path = args.model
    if path is None or not Path(path).is_file():
        from tools.make_synthetic_gguf import write_synthetic_model

        path = write_synthetic_model(Path(tempfile.mkdtemp()) / "synthetic.gguf", seed=1)
    drv.init()
    name = drv.Device(0).name()
    t0 = time.perf_counter()
    with open_gguf(path) as model:
        engine = CudaEngine.load(model, max_context=args.ctx, use_graph=not args.no_graph)
    load_s = time.perf_counter() - t0
    try:

        def decode(n: int):
            def run():
                engine.reset()
                engine.prefill([1])
                token = 1
                for i in range(n):
                    token = engine.sample(GREEDY, (), i)
                    engine.step(token)

            return run

        def steps_only(n: int):
            def run():
                engine.reset()
                engine.prefill([1])
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
            t = median_time(fn, args.reps)
            rows.append((label, n / t, 1e3 * t / n))
    finally:
        engine.close()
    print(
        f"device: {name}; model: {Path(path).name}; graph: {not args.no_graph}; "
        f"load {load_s:.2f} s (kernel cache warm after the first run)"
    )
    print(f"{'test':<18}{'tokens/s':>12}{'ms/token':>10}")
    for label, tps, ms in rows:
        print(f"{label:<18}{tps:>12.1f}{ms:>10.4f}")


if __name__ == "__main__":
    main()
