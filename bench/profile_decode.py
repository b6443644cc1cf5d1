"""Where a decode step's (or a prefill pass's) GPU time goes: every launch, timed alone in a graph.

    python bench/profile_decode.py [--model PATH | --family qwen2] [--ctx 2048] [--pos 256]
                                   [--prefill N]

Records the launches of one eager decode step (PyCUDA's and cuda.launch's prepared_async_call
are wrapped), then for each launch captures a graph of REPEAT copies (launched without PDL) and
times its replays with CUDA events. Per kernel (named by the launcher that made it): launches per
step and microseconds per step. The sum against the whole step's graph time shows what the gaps
between kernels cost. --prefill N profiles a pass of N tokens from an empty cache instead, and
compares the sum with the pass's GPU span (events around an eager pass: host launch time shows
up there when the host is slower than the GPU).
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
from cuda.launch import DriverKernel  # noqa: E402
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
    ap.add_argument("--family", default="smollm2", help="synthetic model without --model")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--pos", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=0, help="profile a prefill pass of N tokens")
    ap.add_argument("--rows", type=int, default=0, help="profile the batched step of K slots")
    args = ap.parse_args()
    import numpy as np
    import pycuda.driver as drv

    from cuda.engine import CudaEngine

    path = args.model
    if path is None or not Path(path).is_file():
        from tools.make_synthetic_gguf import write_synthetic_model

        path = write_synthetic_model(
            Path(tempfile.mkdtemp()) / f"synthetic-{args.family}.gguf", seed=1, family=args.family
        )
    with open_gguf(path) as model:
        engine = CudaEngine.load(model, max_context=args.ctx, max_batch=max(1, args.rows))
    s = engine.stream
    engine.release(0)
    pos_buf = engine.fwd.b["state.pos"]
    n_pos = 1  # positions the step moves on (restored after each kernel's timing)
    if args.rows:
        from cuda.forward import splits_for

        for slot in range(args.rows):
            engine.prefill(slot, [(5 * i + slot) % 1000 for i in range(args.pos)])
        drv.memcpy_htod(engine.fwd.base["batch.slots"], np.arange(args.rows, dtype=np.int32))
        splits, n_pos = splits_for(args.pos + 1), args.rows
        whole = time_graph(drv, s, engine._row_graphs[args.rows, splits])
        what, enqueue_once = (
            f"batched decode step of {args.rows} rows at position {args.pos}",
            (lambda: engine.fwd.enqueue_decode_rows(args.rows, splits)),
        )
    elif args.prefill:
        ids = np.array([(7 * i + 3) % 1000 for i in range(args.prefill)], np.int32)
        drv.memcpy_htod(engine.fwd.b["state.ids"], ids)
        start, end = drv.Event(), drv.Event()
        for _ in range(3):  # warm-up, then the last pass counts
            drv.memcpy_htod(pos_buf, np.zeros(1, np.int32))
            start.record(s)
            engine.fwd.enqueue_prefill(args.prefill)
            end.record(s)
            end.synchronize()
        whole = end.time_since(start) / 1e3
        drv.memcpy_htod(pos_buf, np.zeros(1, np.int32))
        what, enqueue_once = (
            f"prefill of {args.prefill} tokens",
            (lambda: engine.fwd.enqueue_prefill(args.prefill)),
        )
    else:
        engine.prefill(0, [(5 * i + 1) % 1000 for i in range(args.pos)])
        from cuda.forward import splits_for

        splits = splits_for(args.pos + 1)
        whole = time_graph(drv, s, engine._graphs[0, splits])  # slot 0's step
        what, enqueue_once = (
            f"decode step at position {args.pos}",
            (lambda: engine.fwd.enqueue_decode(splits)),
        )
    pos_now = np.zeros(n_pos, np.int32)
    drv.memcpy_dtoh(pos_now, pos_buf)
    launches = []
    originals = drv.Function.prepared_async_call, DriverKernel.prepared_async_call

    def record(fn, grid, block, stream, *a, **k):
        stack = inspect.stack()
        depth = 1
        while stack[depth].function in ("counted", "__call__", "record"):
            depth += 1
        shape = "x".join(str(g) for g in grid)
        launches.append((f"{stack[depth].function} {shape}", fn, grid, block, a))

    drv.Function.prepared_async_call = record
    DriverKernel.prepared_async_call = record
    try:
        enqueue_once()
    finally:
        drv.Function.prepared_async_call, DriverKernel.prepared_async_call = originals
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
        drv.memcpy_htod(pos_buf, pos_now)  # the step's argmax moves the position on
    engine.close()
    total = sum(t for _, t in per_kernel.values())
    span = "graph" if not args.prefill else "eager GPU span"
    print(
        f"{what}: {span} {1e6 * whole:.1f} us, {len(launches)} launches; "
        f"kernels alone {1e6 * total:.1f} us"
    )
    print(f"{'kernel':<28}{'launches':>9}{'us/step':>10}{'us each':>9}")
    for name, (n, t) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<28}{n:>9}{1e6 * t:>10.1f}{1e6 * t / n:>9.2f}")


if __name__ == "__main__":
    main()
