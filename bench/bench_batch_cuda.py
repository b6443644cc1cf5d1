"""Aggregate decode tokens/s of the CUDA engine's slots at batch 1, 4, 16 and 64, and
single-stream decode against bench/bench_cuda.py's loop, for synthetic SmolLM2- and
Qwen2.5-shaped files (tools/make_synthetic_gguf.py: real shapes and types, random weights).

    python bench/bench_batch_cuda.py [--families smollm2,qwen2] [--batches 1,4,16,64]
                                     [--prompt 128] [--gen 128] [--budget-s 110]

Per family: one engine with 64 slots (max_context prompt + gen + 1). For each batch size B the
B slots are prefilled with `--prompt` tokens each (not timed), then decoded `--gen` steps in
lockstep as the batcher runs them: one `decode(slots, tokens)` then one greedy
`sample(slots, ...)` per step; aggregate = B * gen / time. "single" is bench_cuda.py's tg loop
(decode, sample, wait) on a 1-slot engine, and "slot 0 of 64" the same loop on the 64-slot
engine: the batch-size-1 path must keep today's speed. The run stops measuring once
`--budget-s` seconds have passed (what was skipped is printed), so it stays under 120 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.gguf_file import open_gguf  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


def single_stream(engine, gen: int) -> float:
    """bench_cuda.py's tg: gen decode steps from an empty slot 0, each sampled and waited for."""
    engine.release(0)
    t0 = time.perf_counter()
    engine.decode([0], [1])
    for i in range(gen - 1):
        engine.decode([0], engine.sample([0], [GREEDY], [()], [i]))
    engine.sample([0], [GREEDY], [()], [gen])
    return gen / (time.perf_counter() - t0)


def batched(engine, batch: int, prompt: int, gen: int) -> float:
    slots = list(range(batch))
    vocab = engine.config.vocab_size
    for s in slots:  # prompts of their own, not timed
        engine.release(s)
        ids = [(7 * i + 13 * s + 3) % vocab for i in range(prompt)]
        for at in range(0, prompt, engine.prefill_chunk):
            engine.prefill(s, ids[at : at + engine.prefill_chunk])
    params, none = [GREEDY] * batch, [()] * batch
    tokens = engine.sample(slots, params, none, [0] * batch)
    engine.stream.synchronize()
    t0 = time.perf_counter()
    for i in range(gen):
        engine.decode(slots, tokens)
        tokens = engine.sample(slots, params, none, [i + 1] * batch)
    elapsed = time.perf_counter() - t0
    for s in slots:
        engine.release(s)
    return batch * gen / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="smollm2,qwen2")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=110.0)
    args = ap.parse_args()
    import pycuda.driver as drv

    from cuda.engine import CudaEngine
    from tools.make_synthetic_gguf import write_synthetic_model

    start = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    ctx = args.prompt + args.gen + 1
    drv.init()
    print(f"device: {drv.Device(0).name()}; prompt {args.prompt}, generate {args.gen}")
    gpu = drv.Device(0).retain_primary_context()
    gpu.push()  # held across engines: kernels compiled once stay loaded
    try:
        for family in args.families.split(","):
            if time.perf_counter() - start > args.budget_s:
                print(f"{family}: skipped (budget of {args.budget_s} s spent)")
                continue
            path = write_synthetic_model(
                Path(tempfile.mkdtemp()) / f"synthetic-{family}.gguf", seed=1, family=family
            )
            with open_gguf(path) as model:
                one = CudaEngine.load(model, max_context=ctx)
                try:
                    single_stream(one, args.gen)  # warm-up
                    single = max(single_stream(one, args.gen) for _ in range(3))
                finally:
                    one.close()
                t0 = time.perf_counter()
                engine = CudaEngine.load(model, max_context=ctx, max_batch=max(batches))
                load_s = time.perf_counter() - t0
            try:
                single_stream(engine, args.gen)  # warm-up
                slot0 = max(single_stream(engine, args.gen) for _ in range(3))
                print(f"{family}: load with {engine.max_batch} slots {load_s:.1f} s")
                print(f"  single stream (1-slot engine)  {single:10.1f} tokens/s")
                print(f"  slot 0 of {engine.max_batch} (same loop)       {slot0:10.1f} tokens/s "
                      f"({100 * (slot0 / single - 1):+.1f} %)")  # fmt: skip
                for b in batches:
                    if time.perf_counter() - start > args.budget_s:
                        print(f"  batch {b:>3}: skipped (budget of {args.budget_s} s spent)")
                        continue
                    tps = batched(engine, b, args.prompt, args.gen)
                    print(f"  batch {b:>3} aggregate             {tps:10.1f} tokens/s "
                          f"({tps / b:.1f} per stream)", flush=True)  # fmt: skip
            finally:
                engine.close()
    finally:
        gpu.pop()
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
