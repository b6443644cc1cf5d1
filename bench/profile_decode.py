"""Where a decode step's GPU time goes: every launch of one step, timed alone inside a graph.

    python bench/profile_decode.py [--model PATH] [--ctx 2048] [--pos 256]

Records the launches of one eager decode step (PyCUDA's prepared_async_call is wrapped), then
for each launch captures a graph of REPEAT copies and times its replays with CUDA events. Per
kernel (named by the launcher that made it): launches per step and microseconds per step. The
sum against the whole step's graph time shows what the gaps between kernels cost.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cuda import graph as cuda_graph  # noqa: E402
from runtime.gguf_file import open_gguf  # noqa: E402

REPEAT = 20
REPLAYS = 10


def time_graph(drv, stream, g) -> float:
    """Seconds per replay of graph g (median-free mean over REPLAYS after one warm-up)."""
    g.launch()
    start, end = drv.Event(), drv.Event()
    start.record(stream)
    for _ in range(REPLAYS):
        g.launch()
    end.record(stream)
    end.synchronize()
    return end.time_since(start) / 1e3 / REPLAYS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=os.environ.get("WORKER_ORCD_MODEL"))
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--pos", type=int, default=256)
    args = ap.parse_args()
    import pycuda.driver as drv

    from cuda.engine import CudaEngine

    path = args.model
    if path is None or not Path(path).is_file():
        from tools.make_synthetic_gguf import write_synthetic_model

        path = write_synthetic_model(Path(tempfile.mkdtemp()) / "synthetic.gguf", seed=1)
    with open_gguf(path) as model:
        engine = CudaEngine.load(model, max_context=args.ctx)
    s = engine.stream
    engine.reset()
    engine.prefill([(5 * i + 1) % 1000 for i in range(args.pos)])
    from cuda.forward import splits_for

    splits = splits_for(args.pos + 1)
    whole = time_graph(drv, s, engine._graphs[splits])
    launches = []
    original = drv.Function.prepared_async_call

    def record(fn, grid, block, stream, *a, **k):
        caller = inspect.stack()[1].function
        caller = inspect.stack()[2].function if caller in ("counted", "__call__") else caller
        launches.append((f"{caller} {grid[0]}x{grid[1]}", fn, grid, block, a))

    drv.Function.prepared_async_call = record
    try:
        engine.fwd.enqueue_decode(splits)
    finally:
        drv.Function.prepared_async_call = original
    per_kernel = collections.defaultdict(lambda: [0, 0.0])
    for name, fn, grid, block, a in launches:
        if name.startswith("advance_position"):
            continue  # replaying it would move the position; it is one tiny kernel

        def enqueue(fn=fn, grid=grid, block=block, a=a) -> int:
            for _ in range(REPEAT):
                fn.prepared_async_call(grid, block, s, *a)
            return REPEAT

        g = cuda_graph.capture(s, enqueue)
        per_kernel[name][0] += 1
        per_kernel[name][1] += time_graph(drv, s, g) / REPEAT
        g.close()
    engine.close()
    total = sum(t for _, t in per_kernel.values())
    print(
        f"decode step at position {args.pos}: graph {1e6 * whole:.1f} us, "
        f"{len(launches)} launches; kernels alone {1e6 * total:.1f} us"
    )
    print(f"{'kernel':<24}{'launches':>9}{'us/step':>10}{'us each':>9}")
    for name, (n, t) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<24}{n:>9}{1e6 * t:>10.1f}{1e6 * t / n:>9.2f}")


if __name__ == "__main__":
    main()
