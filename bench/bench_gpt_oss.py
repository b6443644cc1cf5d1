"""gpt-oss-20b on the GPU machine (issue 14, item 5): a synthetic file of the real shapes and
types loaded by the CUDA engine, its VRAM against W-1823's envelope, what /health would say, the
decode speed, and llama.cpp's on the same file. No network; bounded by --budget-s.

    python3 bench/bench_gpt_oss.py [--model /tmp/gpt-oss-20b-synth.gguf] [--layers N]
        [--ctx 4096] [--prompt 128] [--steps 128] [--llama-bench PATH] [--json OUT.json]
        [--budget-s 110]

1. The file: written by tools/make_synthetic_gguf.py --family gpt-oss when absent (12.1 GB: 459
   tensors, experts MXFP4, other matrices Q8_0, random weights), never carried. --layers N
   writes (and reports) a shorter model, for a dry run.
2. `CudaEngine.load` (the engine the worker runs, the gpt_oss block on the family seam) with
   --ctx positions: seconds, the engine's own allocations (`memory_bytes`, what /health calls
   vram_bytes_used), the device memory in use after the load (mem_get_info, with the context's
   own), both against W-1823's ~16 GB +-20 % (12.8 .. 19.2 GB), and the estimate
   (`vram_needed`, which the load allocates exactly) at the model's full context.
3. /health's model fields from the loaded engine: quant_kind (the file's general.file_type 38,
   llama.cpp's MXFP4_MOE, named as the spec names it: MXFP4), resident (the residency check: every allocation device
   memory, the weight checksums intact).
4. Decode: a --prompt-token prefill, then --steps greedy steps as the generation loop runs them
   (each on the token sampled after the one before, waited for): tokens/s; "step only" is
   llama-bench's tg (steps without sampling, one wait at the end). Prefill tokens/s too.
5. --llama-bench PATH (the binary, or a build folder holding it: bench/llama_cpp.py build):
   tg128 and pp512 (-fa 1 -ngl 99, 2 reps) on the same file, skipped when --budget-s is spent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from runtime.gguf_file import open_gguf  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

DEFAULT_MODEL = Path("/tmp/gpt-oss-20b-synth.gguf")
ENVELOPE = (0.8 * 16e9, 1.2 * 16e9)  # W-1823: ~16 GB +- 20 %
GREEDY = SamplingParams(temperature=0.0)
LLAMA_BENCH_S = 60  # what llama-bench needs at most: two 12 GB loads, tg128 and pp512 twice


def ensure_file(path: Path, layers: int | None) -> dict:
    if path.is_file():
        return {"path": str(path), "written": False, "bytes": path.stat().st_size}
    from tools.make_synthetic_gguf import write_synthetic_model

    t0 = time.perf_counter()
    write_synthetic_model(path, family="gpt-oss", n_layers=layers)
    return {"path": str(path), "written": True, "seconds": round(time.perf_counter() - t0, 1),
            "bytes": path.stat().st_size}  # fmt: skip


def load(path: Path, ctx: int) -> tuple[object, dict]:
    from cuda.engine import CudaEngine, vram_needed

    t0 = time.perf_counter()
    with open_gguf(path) as model:
        engine = CudaEngine.load(model, max_context=ctx, max_batch=1)
        needed = vram_needed(model, ctx)
        full_ctx = model.config.context_length
        at_full = vram_needed(model, full_ctx)  # the estimate only: nothing allocated
        tensors = len(model.tensors)
    import pycuda.driver as drv  # the engine's context is current on this thread

    free, total = drv.mem_get_info()
    lo, hi = ENVELOPE
    used = engine.memory_bytes()
    return engine, {
        "seconds": round(time.perf_counter() - t0, 1), "tensors": tensors,
        "vram_bytes_used": used, "vram_needed_estimate": needed,
        "device_bytes_in_use": total - free, "device_bytes_total": total,
        "in_w1823_band": bool(lo <= used <= hi), "within_w1823_max": bool(used <= hi),
        "device_in_w1823_band": bool(lo <= total - free <= hi),
        "full_context": full_ctx, "vram_needed_at_full_context": at_full,
        "full_context_in_w1823_band": bool(lo <= at_full <= hi),
    }  # fmt: skip


def health(engine) -> dict:
    report = engine.check_residency()
    return {"backend": engine.backend, "quant_kind": engine.quant_kind, "resident": report.ok,
            "residency_detail": report.detail, "vram_bytes_used": engine.memory_bytes()}  # fmt: skip


def decode(engine, prompt: int, steps: int) -> dict:
    """Slot 0 of the engine: prefill `prompt` tokens, then the generation loop (decode, sample)
    and llama-bench's tg (decodes only, one wait at the end)."""
    vocab = engine.config.vocab_size
    ids = [(7 * i + 3) % vocab for i in range(prompt)]

    def prefill(tokens) -> None:
        for start in range(0, len(tokens), engine.prefill_chunk):
            engine.prefill(0, tokens[start : start + engine.prefill_chunk])

    def sample(draw: int) -> int:
        return engine.sample([0], [GREEDY], [()], [draw])[0]

    engine.release(0)
    prefill(ids[:8])  # warm-up: the first launches of each kernel
    engine.decode([0], [1])
    sample(0)
    engine.release(0)
    t0 = time.perf_counter()
    prefill(ids)
    engine.stream.synchronize()
    t1 = time.perf_counter()
    token = sample(0)
    t2 = time.perf_counter()
    for i in range(steps):  # the generation loop: decode, sample (waits for the decode), repeat
        engine.decode([0], [token])
        token = sample(i + 1)
    t3 = time.perf_counter()
    engine.release(0)
    prefill(ids)
    engine.stream.synchronize()
    t4 = time.perf_counter()
    for _ in range(steps):  # llama-bench's tg: decodes only, one wait at the end
        engine.decode([0], [1])
    engine.stream.synchronize()
    t5 = time.perf_counter()
    return {"prompt": prompt, "steps": steps, "prefill_tokens_per_s": round(prompt / (t1 - t0), 1),
            "decode_tokens_per_s": round(steps / (t3 - t2), 1),
            "decode_step_only_tokens_per_s": round(steps / (t5 - t4), 1),
            "last_token": int(token)}  # fmt: skip


def llama_bench(path: Path, binary: Path, timeout_s: float) -> dict:
    import llama_cpp

    return llama_cpp.run(binary, path, n_prompt=(512,), n_gen=(128,), reps=2, timeout_s=timeout_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--layers", type=int, help="write a model of this many layers (dry run)")
    ap.add_argument("--ctx", type=int, default=4096, help="KV-cache positions allocated")
    ap.add_argument("--prompt", type=int, default=128, help="prefill tokens before decoding")
    ap.add_argument("--steps", type=int, default=128, help="decode steps timed")
    ap.add_argument("--llama-bench", type=Path, help="llama-bench binary or its build folder")
    ap.add_argument("--budget-s", type=float, default=110.0, help="skip llama-bench after this")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    res: dict = {"file": ensure_file(args.model, args.layers)}
    print(f"file: {res['file']}", flush=True)
    engine, res["load"] = load(args.model, args.ctx)
    try:
        lo, hi = ENVELOPE
        ld = res["load"]
        print(f"load: {ld['seconds']} s, {ld['tensors']} tensors; vram_bytes_used "
              f"{ld['vram_bytes_used'] / 1e9:.2f} GB (estimate {ld['vram_needed_estimate'] / 1e9:.2f}"
              f"), device in use {ld['device_bytes_in_use'] / 1e9:.2f} GB; W-1823 "
              f"{lo / 1e9:.1f}..{hi / 1e9:.1f} GB: in band {ld['in_w1823_band']}, at most the top "
              f"{ld['within_w1823_max']}; at the full {ld['full_context']}-token context the "
              f"estimate is {ld['vram_needed_at_full_context'] / 1e9:.2f} GB", flush=True)  # fmt: skip
        res["health"] = health(engine)
        print(f"health: {json.dumps(res['health'])}", flush=True)
        res["decode"] = decode(engine, args.prompt, args.steps)
        print(f"ours: {json.dumps(res['decode'])}", flush=True)
    finally:
        engine.close()
    left = args.budget_s - (time.perf_counter() - start)
    if args.llama_bench is not None:
        if left < LLAMA_BENCH_S / 2:
            res["llama_cpp"] = {"skipped": f"{left:.0f} s of --budget-s left"}
        else:
            try:
                res["llama_cpp"] = llama_bench(args.model, args.llama_bench, left)
            except Exception as exc:  # a report, not a crash: ours is measured already
                res["llama_cpp"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        tg = res["llama_cpp"].get("tests", {}).get("tg128", {}).get("tokens_per_s")
        ours = res["decode"]["decode_step_only_tokens_per_s"]
        ratio = f"; ours (step only) / llama.cpp tg128 = {ours / tg:.2f}" if tg else ""
        print(f"llama.cpp: {json.dumps(res['llama_cpp'])[:1500]}{ratio}")
    res["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    ok = res["health"]["resident"] and res["health"]["quant_kind"] == "MXFP4"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
