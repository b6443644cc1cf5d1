"""gpt-oss-20b on the GPU machine: a synthetic file of the real shapes and types, its VRAM, the
decode step's kernels, llama.cpp on the same file, and (once the CUDA engine runs the gpt_oss
block) a real worker's /health and decode speed.

    python3 bench/bench_gpt_oss.py [--model /tmp/gpt-oss-20b-synth.gguf] [--llama-cpp DIR]
        [--ctx 4096] [--pos 1024] [--reps 20] [--worker] [--json OUT.json]

1. The file: written here by tools/make_synthetic_gguf.py --family gpt-oss when absent (12.1 GB:
   459 tensors, experts MXFP4, other matrices Q8_0, random weights; ~1 min), never carried.
   Reported: quant_kind (the type holding most bytes: MXFP4), weight bytes.
2. The decode step (cuda/gpt_oss_decode.py: the gpt_oss block's launch sequence, 171 launches,
   on the file's own weights, every layer uploaded), captured as one CUDA graph with PDL and
   replayed from position --pos: median of --reps replays, step time and tokens/s (llama-bench's
   tg: no sampling round trip). VRAM: the device memory all of it took (mem_get_info).
3. --llama-cpp DIR (a build: bench/llama_cpp.py build; or the packed source): llama-bench tg128
   and pp512 (-fa 1 -ngl 99) on the same file.
4. --worker: `python -m worker_orcd --backend cuda` on the file: /health (status, quant_kind,
   resident, vram_bytes_used, tokenizer_kind) once ready, or the load error (the CUDA engine
   refuses the gpt_oss block until its wiring lands: cuda.weights.BLOCKS).

The W-1823 envelope is ~16 GB +-20 % (12.8 .. 19.2 GB): printed beside the VRAM figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from runtime.gguf_file import open_gguf  # noqa: E402

DEFAULT_MODEL = Path("/tmp/gpt-oss-20b-synth.gguf")
ENVELOPE = (0.8 * 16e9, 1.2 * 16e9)  # W-1823: ~16 GB +- 20 %


def ensure_file(path: Path) -> dict:
    if path.is_file():
        return {"written": False, "bytes": path.stat().st_size}
    from tools.make_synthetic_gguf import write_synthetic_model

    t0 = time.perf_counter()
    write_synthetic_model(path, family="gpt-oss")
    return {"written": True, "seconds": round(time.perf_counter() - t0, 1),
            "bytes": path.stat().st_size}  # fmt: skip


def time_step(step, pos: int, reps: int) -> dict:
    """Median replay time of the decode step captured as one graph, from position `pos`."""
    import pycuda.driver as drv

    from cuda.graph import capture

    step.reset(pos)
    drv.memcpy_htod(step.token, np.array([1000], np.int32))
    graph = capture(step.stream, step.enqueue)
    start, end = drv.Event(), drv.Event()
    graph.launch()
    step.stream.synchronize()
    times = []
    for _ in range(reps):  # each replay advances the position by one
        start.record(step.stream)
        graph.launch()
        end.record(step.stream)
        end.synchronize()
        times.append(end.time_since(start) / 1e3)
    logits = np.empty(step.c.vocab_size, np.float32)
    drv.memcpy_dtoh(logits, step.logits)
    graph.close()
    median = statistics.median(times)
    return {"launches": graph.n_launches, "step_ms": round(median * 1e3, 3),
            "tokens_per_s": round(1 / median, 1), "finite": bool(np.isfinite(logits).all())}  # fmt: skip


def worker_health(path: Path, ctx: int) -> dict:
    import httpx

    port = 18000 + os.getpid() % 1000
    cmd = [sys.executable, "-m", "worker_orcd", "--model", str(path), "--backend", "cuda",
           "--port", str(port), "--max-context", str(ctx), "--worker-id", "gpt-oss-bench"]  # fmt: skip
    log = Path("/tmp/gpt-oss-worker.log")
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=BENCH.parent, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - t0 < 300:
                if proc.poll() is not None:
                    return {"exit": proc.returncode, "log_tail": log.read_text()[-2000:]}
                try:
                    health = client.get(f"http://127.0.0.1:{port}/health").json()
                    if health.get("status") == "ready":
                        return {"seconds_to_ready": round(time.perf_counter() - t0, 1), **health}
                except (httpx.TransportError, ValueError):
                    pass
                time.sleep(0.05)
        return {"error": "not ready in 300 s"}
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp build (or packed source)")
    ap.add_argument("--ctx", type=int, default=4096, help="KV-cache positions allocated")
    ap.add_argument("--pos", type=int, default=1024, help="decode position timed")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--worker", action="store_true", help="start a real worker, read /health")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res: dict = {"file": ensure_file(args.model)}
    with open_gguf(args.model) as model:
        from cuda.weights import weight_bytes

        c = model.config
        kv = 2 * c.n_layers * c.kv_dim * args.ctx * 2  # fp16 keys and values
        res["model"] = {"quant_kind": model.quant_kind, "weight_bytes": weight_bytes(model),
                        "kv_bytes": kv, "tensors": len(model.tensors)}  # fmt: skip
        import pycuda.autoinit  # noqa: F401  (this process's context on device 0)

        from cuda.gpt_oss_decode import GptOssDecode

        step = GptOssDecode(model, args.ctx)
        res["kernels"] = {"vram_bytes": step.vram_bytes, **time_step(step, args.pos, args.reps)}
    lo, hi = ENVELOPE
    vram = res["kernels"]["vram_bytes"]
    res["kernels"]["in_w1823_envelope"] = bool(vram <= hi)
    print(f"file: {res['file']}  quant_kind {res['model']['quant_kind']}, weights "
          f"{res['model']['weight_bytes'] / 1e9:.2f} GB, KV at ctx {args.ctx} {kv / 1e9:.2f} GB")  # fmt: skip
    print(f"decode step kernels (graph, pos {args.pos}): {res['kernels']['step_ms']} ms = "
          f"{res['kernels']['tokens_per_s']} tokens/s, {res['kernels']['launches']} launches, "
          f"VRAM {vram / 1e9:.2f} GB (W-1823: {lo / 1e9:.1f}..{hi / 1e9:.1f} GB)")  # fmt: skip
    if args.llama_cpp:
        import llama_cpp

        build = args.llama_cpp
        if llama_cpp.find_llama_bench(build) is None:
            build = llama_cpp.build(args.llama_cpp, Path("/tmp/llama-cpp-build"))  # the binary
        res["llama_cpp"] = llama_cpp.run(build, args.model, n_prompt=(512,), n_gen=(128,), reps=3)
        tg = res["llama_cpp"]["tests"].get("tg128", {}).get("tokens_per_s")
        print(f"llama-bench tg128 {tg} tokens/s; ours (kernels) / llama.cpp = "
              f"{res['kernels']['tokens_per_s'] / tg:.2f}" if tg else res["llama_cpp"])  # fmt: skip
    if args.worker:
        res["worker"] = worker_health(args.model, args.ctx)
        print(f"worker /health: {json.dumps(res['worker'])[:600]}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if math.isfinite(res["kernels"]["tokens_per_s"]) else 1


if __name__ == "__main__":
    sys.exit(main())
