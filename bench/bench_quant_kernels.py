"""Micro-benchmark of the quant kernels at the default model's shapes (run on the GPU machine).

    python3 bench/bench_quant_kernels.py

Each case captures `REPS` launches into one CUDA graph (the driver API through ctypes, as the
engine does) and times graph replays with events, so Python's ~7 us launch cost is not measured.
The launches cycle through enough copies of the weight matrix to exceed the L2 cache, as a real
forward pass does (98 MB of weights vs 50 MB of L2). Prints us per call, weight GB/s, TFLOP/s,
and the sums for one decode step / one 512-token prefill of SmolLM2-135M's 30 layers.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pycuda.driver as drv  # noqa: E402
from gguf import GGML_QUANT_SIZES  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

REPS = 60
L2_DEFEAT_BYTES = 160 << 20
LAYER = [  # (name, rows, cols) of one layer of the default model as the engine lays it out (Q4_1)
    ("attn_qkv", 960, 576),
    ("attn_output", 576, 576),
    ("ffn_gate_up", 3072, 576),
    ("ffn_down", 576, 1536),
]
N_LAYERS = 30

_cu = ctypes.CDLL("libcuda.so.1")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed: CUresult {rc}")


def time_graph(stream: drv.Stream, launch, reps: int = REPS, replays: int = 5, stat=min) -> float:
    """Seconds per launch: `launch(i)` for i < reps captured as one graph, replayed `replays`
    times, each replay timed with events; `stat` (min, or e.g. statistics.median) of them."""
    handle = ctypes.c_void_p(stream.handle)
    _check(_cu.cuStreamBeginCapture_v2(handle, ctypes.c_int(2)), "cuStreamBeginCapture")  # relaxed
    for i in range(reps):
        launch(i)
    graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
    _check(_cu.cuStreamEndCapture(handle, ctypes.byref(graph)), "cuStreamEndCapture")
    _check(_cu.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "inst")
    for _ in range(3):  # warm up
        _check(_cu.cuGraphLaunch(exe, handle), "cuGraphLaunch")
    start, stop = drv.Event(), drv.Event()
    times = []
    for _ in range(replays):
        start.record(stream)
        _check(_cu.cuGraphLaunch(exe, handle), "cuGraphLaunch")
        stop.record(stream)
        stop.synchronize()
        times.append(stop.time_since(start) * 1e-3 / reps)
    _cu.cuGraphExecDestroy(exe)
    _cu.cuGraphDestroy(graph)
    return stat(times)


def weight_copies(
    qtype: Q, rows: int, cols: int, rng, copies: int | None = None
) -> tuple[list, int]:
    """Device copies of one random (rows, cols) matrix of valid blocks (`copies`, by default
    enough to exceed L2 over REPS launches), and its size in bytes."""
    qk, size = GGML_QUANT_SIZES[qtype]
    nbytes = rows * cols // qk * size
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    scales = raw.reshape(-1, size)[:, :2]  # keep every block's d (and Q4_1's m) finite
    scales[:, 1] &= 0x3B
    if qtype == Q.Q4_1:
        raw.reshape(-1, size)[:, 3] &= 0x3B
    if copies is None:
        copies = max(1, min(REPS, L2_DEFEAT_BYTES // nbytes))
    return [drv.to_device(raw) for _ in range(copies)], nbytes


def main() -> None:
    from cuda.quant_ops import QuantKernels

    drv.init()
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    try:
        builds = {"guarded": QuantKernels(batched_loads=False)}
        builds["batched"] = QuantKernels(batched_loads=True)
        kq = builds["guarded"]
        stream = drv.Stream()
        rng = np.random.default_rng(0)
        print(f"device: {drv.Context.get_device().name()}  SMs: {kq.num_sms}")
        x = drv.to_device(rng.standard_normal(512 * 1536).astype(np.float32))
        g = drv.to_device(np.ones(1536, np.float32))
        y = drv.mem_alloc(512 * 49152 * 4)
        sums: dict[str, float] = {}
        print(f"{'kernel':52s} {'us/call':>9s} {'GB/s':>8s} {'TFLOP/s':>8s}")

        def report(label, t, nbytes, flops):
            print(f"{label:52s} {t * 1e6:9.2f} {nbytes / t / 1e9:8.0f} {flops / t / 1e12:8.3f}")

        def add(key, t):
            sums[key] = sums.get(key, 0.0) + t

        shapes = [(Q.Q4_1, n, r, c) for n, r, c in LAYER] + [(Q.Q8_0, "output", 49152, 576)]
        for qtype, name, rows, cols in shapes:
            ws, nbytes = weight_copies(qtype, rows, cols, rng)
            weight = N_LAYERS if name != "output" else 1
            for build, k in builds.items():
                for variant in ("plain", "tall", "wide", None):

                    def mv(i, k=k, ws=ws, rows=rows, cols=cols, qtype=qtype, variant=variant):
                        k.matvec(qtype, ws[i % len(ws)], rows, cols, x, y, stream, variant=variant)

                    t = time_graph(stream, mv)
                    if variant is None:
                        add(f"decode {build}", t * weight)
                        if name in ("attn_output", "ffn_down"):  # no fused form
                            add(f"decode fused {build}", t * weight)
                    label = f"matvec {build} {variant or 'auto'} {qtype.name} {name} {rows}x{cols}"
                    report(label, t, nbytes, 2 * rows * cols)
                fused = {
                    "attn_qkv": lambda i, k=k, ws=ws: k.matvec_norm(
                        Q.Q4_1, ws[i % len(ws)], 960, 576, x, g, 1e-5, y, stream
                    ),
                    "ffn_gate_up": lambda i, k=k, ws=ws: k.matvec_norm_glu(
                        Q.Q4_1, ws[i % len(ws)], 1536, 576, x, g, 1e-5, y, stream
                    ),
                    "output": lambda i, k=k, ws=ws: k.matvec_norm(
                        Q.Q8_0, ws[i % len(ws)], 49152, 576, x, g, 1e-5, y, stream
                    ),
                }.get(name)
                if fused is not None:
                    t = time_graph(stream, fused)
                    add(f"decode fused {build}", t * weight)
                    what = "rmsnorm+swiglu" if name == "ffn_gate_up" else "rmsnorm"
                    report(f"fused {build} {what} {name}", t, nbytes, 2 * rows * cols)
            if name == "output":
                continue
            for variant in ("simt", "tc32", "tcs32", "tcs64"):

                def mm(i, ws=ws, rows=rows, cols=cols, variant=variant):
                    kq.matmul(
                        Q.Q4_1, ws[i % len(ws)], rows, cols, x, 512, y, stream, variant=variant
                    )

                t = time_graph(stream, mm, reps=20)
                add(f"prefill {variant}", t * N_LAYERS)
                report(f"matmul {variant} n=512 {name}", t, nbytes, 2 * 512 * rows * cols)
        ids = drv.to_device(rng.integers(0, 49152, 512).astype(np.int32))
        emb, _ = weight_copies(Q.Q8_0, 49152, 576, rng)
        for n in (1, 512):
            t = time_graph(
                stream, lambda i, n=n: kq.embed_rows(Q.Q8_0, emb[0], 576, ids, n, y, stream)
            )
            print(f"{'embed Q8_0 n=' + str(n):52s} {t * 1e6:9.2f}")
        print(
            "sums over the 30 layers (+ the head for decode); 'fused' replaces 3 launches a layer"
        )
        for key, t in sums.items():
            unit, scale = ("ms", 1e3) if key.startswith("prefill") else ("us", 1e6)
            print(f"  {key:30s} {t * scale:9.2f} {unit}")
    finally:
        ctx.pop()


if __name__ == "__main__":
    main()
