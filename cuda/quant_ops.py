"""Launchers for the quantized-weight kernels: embedding gather, matrix-vector, matrix-matrix.

Weights are the GGUF file's raw bytes in VRAM (row-major rows of GGML blocks); activations are
float32. Every launch is a `prepared_async_call` on the caller's stream with no host sync and no
allocation, so the engine can capture decode steps into a CUDA graph (kernel arguments are fixed
per call site: token ids and positions live in device memory).

Pointers are device addresses: ints, or anything `int()` takes (a PyCUDA DeviceAllocation).

Shape rules (checked here, ValueError otherwise):
- quantized types: cols a multiple of the block (32, or 256 for Q4_K / Q6_K); rows arbitrary.
- F32 / F16: matvec cols a multiple of 8, matmul cols a multiple of 32, embedding any width.
- matmul additionally needs cols a multiple of 32 for every type (its k-tile).

`matmul` runs on tensor cores by default (X and W rounded to fp16 per tile, fp32 accumulation,
relative error ~1e-3 of sum |w x|); `tensor_cores=False` selects the fp32 SIMT kernel.

The embedding and matrix-vector kernels (the decode step's) are launched through the driver API
(cuda/launch.py) so that `pdl=True` can start them with programmatic dependent launch: they
prefetch their weight rows into L2, then wait for the kernel before them (cuda/kernels/pdl.cuh).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from gguf import GGMLQuantizationType as Q

from cuda.compile import load_driver_module, load_module

log = logging.getLogger(__name__)

#: qtype -> (kernel suffix, values per block as the kernels see it)
_TYPES: dict[Q, tuple[str, int]] = {
    Q.F32: ("f32", 8),
    Q.F16: ("f16", 8),
    Q.Q8_0: ("q8_0", 32),
    Q.Q4_0: ("q4_0", 32),
    Q.Q4_1: ("q4_1", 32),
    Q.Q5_0: ("q5_0", 32),
    Q.Q4_K: ("q4_k", 256),
    Q.Q6_K: ("q6_k", 256),
}
#: the segmented matvec's type codes: the order of _TYPES (GGML_FOR_EACH_TYPE in the kernels)
_TYPE_CODES = {qtype: code for code, qtype in enumerate(_TYPES)}
_ARGS = "PiiPPi"  # W, rows, cols, x, y, accumulate
MAX_SEGMENTS = 3  # matrices per segmented matvec launch (q | k | v)
#: cols, x, g, eps, y, bias, accumulate, then (W, type code, rows) of each segment
_SEG_ARGS = "iPPfPPi" + "Pii" * MAX_SEGMENTS
#: activation of the fused gated FFN -> kernel name part (cuda/kernels/activations.cuh)
GLU_KERNELS = {"silu": "swiglu", "gelu_tanh": "geglu"}
_NORM_ARGS = "PiiPPfPi"  # W, rows, cols, x, g, eps, y, accumulate
_MM_ARGS = "PiiPiPiPi"  # W, rows, cols, X, n, Y, ldy, bias, accumulate
#: matmul variant -> (tokens per tile, threads per block); "tcs*" stage 128 columns at a time
_MM_SHAPES = {
    "simt": (64, 256),
    "tc32": (32, 128),
    "tcs32": (32, 128),
    "tcs64": (64, 128),
}
#: Defaults measured on an H100 (2026-11-26, bench/bench_quant_kernels.py, bench_cuda.py;
#: decision 0010). The staged "tcs" matmul (a stage's loads issued together, the next stage's in
#: flight during the MMAs) takes a 512-token layer's products from 146 to 59 us (pp512 54k ->
#: 90k tokens/s). The batched branch-free matvec build (QuantKernels(batched_loads=True)) is
#: correct but slower at these shapes (decode 1,689 vs 1,795 tokens/s): off.
BATCHED_LOADS = False
PREFILL_KERNEL = "tcs"  # the staged kernel, tile height chosen by grid size; or "tc32"
#: matvec kernels load and decode a lane's first slots before the PDL wait (MV_PRE=1)
PRELOAD = True
_MV_WARPS = 4  # warps per thread block of the matvec kernels (MV_WARPS in quant_matvec.cu)
#: matvec variant -> rows per thread block: plain = a warp per row, tall = a warp per 4 rows
#: (x loads shared by 4 rows), wide = 2 warps per row (long rows)
_MV_ROWS = {"plain": _MV_WARPS, "tall": 4 * _MV_WARPS, "wide": _MV_WARPS // 2, "wide4": 1}
_MV_KERNEL = {
    "plain": "matvec", "tall": "matvec_tall", "wide": "matvec_wide", "wide4": "matvec_wide4",
}  # fmt: skip
_MV_NORM_KERNEL = {"plain": "matvec_norm", "tall": "matvec_norm_tall"}
_TALL_ROWS = 4096  # from here on, the output head's shape: x traffic dominates
_WIDE_SLOTS = 96  # rows of more 8-value slots than this (768+ cols) get 2 warps
#: ... and of more than this (3072+ cols: qwen2's ffn_down, 4864) 4 warps, a block per row:
#: 2 warps would leave a lane ~10 sequential slot rounds. Not yet timed on a GPU (0012).
_WIDE4_SLOTS = 384
_EMBED_THREADS = 128


def _module(filename: str, defines: dict[str, Any] | None = None, *, driver: bool = False):
    # PyCUDA turns any nvcc stderr into a warning; log it rather than let pytest's
    # filterwarnings=error (or a caller's) turn a harmless note into a failure.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load = load_driver_module if driver else load_module
        module = load(filename, defines=defines)
    for w in caught:
        log.warning("nvcc on %s: %s", filename, w.message)
    return module


def sources(batched_loads: bool | None = None, preload: bool | None = None) -> list[tuple]:
    """(file in cuda/kernels, defines) of each module QuantKernels loads (matvec first);
    None: the module's current BATCHED_LOADS / PRELOAD, as QuantKernels takes them."""
    batched_loads = BATCHED_LOADS if batched_loads is None else batched_loads
    preload = PRELOAD if preload is None else preload
    matvec = {"MV_BATCH": int(batched_loads), "MV_PRE": int(preload)}
    return [("quant_matvec.cu", matvec), ("quant_embed.cu", None), ("quant_matmul.cu", None)]


class QuantKernels:
    """The quant kernels of the current CUDA context, compiled (or loaded from cache) at init.

    `batched_loads` compiles the matvec kernels with their branch-free batched slot loop
    (MV_BATCH=1); None takes the module default BATCHED_LOADS. `preload` likewise (PRELOAD).
    """

    def __init__(self, *, batched_loads: bool | None = None, preload: bool | None = None) -> None:
        import pycuda.driver as drv

        self.batched_loads = BATCHED_LOADS if batched_loads is None else bool(batched_loads)
        self.preload = PRELOAD if preload is None else bool(preload)
        # the decode step's kernels load through the driver API: PDL-capable (cuda/launch.py)
        (_, defines), _, _ = sources(self.batched_loads, self.preload)
        mv = _module("quant_matvec.cu", defines, driver=True)
        emb, mm = _module("quant_embed.cu", driver=True), _module("quant_matmul.cu")
        self._matvec: dict[tuple[str, Q], Any] = {}
        self._matvec_norm: dict[tuple[str, Q], Any] = {}
        self._matvec_glu: dict[tuple[str, Q], Any] = {}
        self._embed: dict[Q, Any] = {}
        self._mm: dict[tuple[str, Q], Any] = {}
        for qtype, (suffix, _) in _TYPES.items():
            for variant, kernel in _MV_KERNEL.items():
                fn = mv.get_function(f"{kernel}_{suffix}")
                self._matvec[variant, qtype] = fn.prepare(_ARGS)
            for variant, kernel in _MV_NORM_KERNEL.items():
                fn = mv.get_function(f"{kernel}_{suffix}")
                self._matvec_norm[variant, qtype] = fn.prepare(_NORM_ARGS)
            for act, kernel in GLU_KERNELS.items():
                fn = mv.get_function(f"matvec_norm_{kernel}_{suffix}")
                self._matvec_glu[act, qtype] = fn.prepare(_NORM_ARGS)
            self._embed[qtype] = emb.get_function(f"embed_{suffix}").prepare("PiPPf")
            for variant in _MM_SHAPES:
                fn = mm.get_function(f"matmul_{variant}_{suffix}")
                self._mm[variant, qtype] = fn.prepare(_MM_ARGS)
        self._matvec_seg = {
            norm: mv.get_function("matvec_seg_norm" if norm else "matvec_seg").prepare(_SEG_ARGS)
            for norm in (False, True)
        }
        self._embed_plain = {
            Q.F32: emb.get_function("embed_plain_f32").prepare("PiPPf"),
            Q.F16: emb.get_function("embed_plain_f16").prepare("PiPPf"),
        }
        dev = drv.Context.get_device()
        self.num_sms = dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)

    @staticmethod
    def supports(qtype: Q | int) -> bool:
        try:
            return Q(qtype) in _TYPES
        except ValueError:
            return False

    @staticmethod
    def matrix_problem(qtype: Q | int, cols: int) -> str | None:
        """Why a (rows, cols) matrix of this type cannot go through every product kernel
        (embedding rows, matvec, matmul), or None when it can. For the load-time check."""
        if not QuantKernels.supports(qtype):
            return f"unsupported type {getattr(qtype, 'name', qtype)}"
        qtype = Q(qtype)
        multiple = max(_TYPES[qtype][1], 32)  # matmul's, the strictest (see matmul)
        if cols <= 0 or cols % multiple:
            return f"{qtype.name} needs cols a positive multiple of {multiple}, got {cols}"
        return None

    @staticmethod
    def _block(qtype: Q | int) -> tuple[Q, str, int]:
        qtype = Q(qtype)
        if qtype not in _TYPES:
            raise ValueError(f"no CUDA kernels for weight type {qtype.name}")
        suffix, qk = _TYPES[qtype]
        return qtype, suffix, qk

    def embed_rows(
        self, qtype, w_ptr: int, n_cols: int, ids_ptr: int, n_tokens: int, out_ptr: int, stream,
        *, scale: float = 1.0, pdl: bool = False,
    ) -> None:  # fmt: skip
        """out (n_tokens, n_cols) float32 = dequantized rows ids[0..n_tokens) (int32, device)
        times `scale` (gemma3: sqrt(d_model); exact for the default 1)."""
        qtype, _, qk = self._block(qtype)
        if n_tokens <= 0:
            return
        if qtype in self._embed_plain and n_cols % qk:
            grid = ((n_cols + _EMBED_THREADS - 1) // _EMBED_THREADS, n_tokens)
            fn = self._embed_plain[qtype]
        else:
            _check_cols(qtype, n_cols, qk)
            slots = n_cols // 8
            grid = ((slots + _EMBED_THREADS - 1) // _EMBED_THREADS, n_tokens)
            fn = self._embed[qtype]
        fn.prepared_async_call(
            grid, (_EMBED_THREADS, 1, 1), stream, int(w_ptr), n_cols, int(ids_ptr), int(out_ptr),
            float(scale), pdl=pdl,
        )  # fmt: skip

    def matvec(
        self, qtype, w_ptr: int, rows: int, cols: int, x_ptr: int, y_ptr: int, stream,
        *, accumulate: bool = False, variant: str | None = None, pdl: bool = False,
    ) -> None:  # fmt: skip
        """y (rows,) = W (rows, cols) @ x (cols,), plus the old y when `accumulate`.

        `variant` forces a kernel ("plain", "tall", "wide", "wide4"; for tests and benchmarks).
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if rows <= 0:
            return
        if variant is None:
            if rows >= _TALL_ROWS:
                variant = "tall"
            elif cols // 8 > _WIDE4_SLOTS:
                variant = "wide4"
            elif cols // 8 > _WIDE_SLOTS:
                variant = "wide"
            else:
                variant = "plain"
        per_block = _MV_ROWS[variant]
        grid = ((rows + per_block - 1) // per_block, 1)
        self._matvec[variant, qtype].prepared_async_call(
            grid, (32 * _MV_WARPS, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(y_ptr), int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_norm(
        self, qtype, w_ptr: int, rows: int, cols: int, x_ptr: int, norm_w_ptr: int, eps: float,
        y_ptr: int, stream, *, accumulate: bool = False, variant: str | None = None,
        pdl: bool = False,
    ) -> None:  # fmt: skip
        """y (rows,) = W @ (rmsnorm(x) * norm_w) (+ the old y): RMSNorm fused into the product.

        x, norm_w: (cols,) float32; rmsnorm(x) = x / sqrt(mean(x^2) + eps). `variant`: "plain"
        or "tall" (default by rows, as for `matvec`).
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if rows <= 0:
            return
        if variant is None:
            variant = "tall" if rows >= _TALL_ROWS else "plain"
        per_block = _MV_ROWS[variant]
        self._matvec_norm[variant, qtype].prepared_async_call(
            ((rows + per_block - 1) // per_block, 1), (32 * _MV_WARPS, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(y_ptr),
            int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_norm_glu(
        self, qtype, w_ptr: int, d_ff: int, cols: int, x_ptr: int, norm_w_ptr: int, eps: float,
        h_ptr: int, stream, *, act: str = "silu", accumulate: bool = False, pdl: bool = False,
    ) -> None:  # fmt: skip
        """h (d_ff,) = act(W_gate @ xn) * (W_up @ xn), xn = rmsnorm(x) * norm_w (+ the old h).

        act: "silu" (SwiGLU: llama, qwen2) or "gelu_tanh" (gemma3's GELU, tanh approximation).
        W is gate | up stacked: (2 * d_ff, cols) raw blocks, gate rows first (the engine's
        ffn_gate_up layout). One launch replaces norm, gate|up product and the activation.
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if act not in GLU_KERNELS:
            raise ValueError(f"unknown activation {act!r} (one of {sorted(GLU_KERNELS)})")
        if d_ff <= 0:
            return
        self._matvec_glu[act, qtype].prepared_async_call(
            ((d_ff + _MV_WARPS - 1) // _MV_WARPS, 1), (32 * _MV_WARPS, 1, 1), stream,
            int(w_ptr), d_ff, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(h_ptr),
            int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_seg(
        self, segments, cols: int, x_ptr: int, y_ptr: int, stream, *, norm_w_ptr: int | None = None,
        eps: float = 0.0, bias_ptr: int | None = None, accumulate: bool = False, pdl: bool = False,
    ) -> None:  # fmt: skip
        """y = concat_s(W_s @ xn) (+ bias) (+ the old y) in one launch: the segmented product.

        `segments`: up to MAX_SEGMENTS (qtype, w_ptr, rows) of matrices that read the same x and
        fill consecutive output rows (q | k | v of a mixed-quant file), each of its own type.
        xn = rmsnorm(x) * norm_w when `norm_w_ptr` is given (the fused decode RMSNorm), else x.
        `bias_ptr`: one float per output row (sum of the segments' rows), added at the end.
        """
        segments = list(segments)
        if not 0 < len(segments) <= MAX_SEGMENTS:
            raise ValueError(f"1 to {MAX_SEGMENTS} segments, got {len(segments)}")
        args: list[int] = []
        for qtype, w_ptr, rows in segments:
            qtype, _, qk = self._block(qtype)
            _check_cols(qtype, cols, qk)
            if rows < 0:
                raise ValueError(f"negative rows {rows}")
            args += [int(w_ptr), _TYPE_CODES[qtype], int(rows)]
        args += [0, 0, 0] * (MAX_SEGMENTS - len(segments))
        total = sum(r for _, _, r in segments)
        if total <= 0:
            return
        norm = norm_w_ptr is not None
        self._matvec_seg[norm].prepared_async_call(
            ((total + _MV_WARPS - 1) // _MV_WARPS, 1), (32 * _MV_WARPS, 1, 1), stream,
            cols, int(x_ptr), int(norm_w_ptr or 0), float(eps), int(y_ptr), int(bias_ptr or 0),
            int(accumulate), *args, pdl=pdl,
        )  # fmt: skip

    def matmul(
        self, qtype, w_ptr: int, rows: int, cols: int, x_ptr: int, n: int, y_ptr: int, stream,
        *, accumulate: bool = False, tensor_cores: bool = True, variant: str | None = None,
        ldy: int | None = None, col0: int = 0, bias_ptr: int | None = None,
    ) -> None:  # fmt: skip
        """Y[:, col0 : col0 + rows] = X (n, cols) @ W (rows, cols).T (+ bias) (+ the old values
        when `accumulate`), Y being (n, ldy) floats (ldy defaults to rows).

        `col0` / `ldy` let a projection group of mixed types write each matrix's output into its
        column slice of the group's output, one launch per matrix for all n tokens. `bias_ptr`:
        `rows` floats added to every output row (in the epilogue, no extra launch).
        `variant` forces a kernel ("simt", "tc32", "tcs32", "tcs64"; for tests and benchmarks);
        by default PREFILL_KERNEL with tensor cores, "simt" (fp32) without.
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, max(qk, 32))
        ldy = rows if ldy is None else ldy
        if col0 < 0 or ldy < col0 + rows:
            raise ValueError(f"columns {col0}..{col0 + rows} do not fit an output row of {ldy}")
        if rows <= 0 or n <= 0:
            return
        col_tiles = (rows + 63) // 64
        if variant is None:
            if not tensor_cores:
                variant = "simt"
            elif PREFILL_KERNEL != "tcs":
                variant = PREFILL_KERNEL
            elif col_tiles * ((n + 63) // 64) >= 2 * self.num_sms:
                variant = "tcs64"
            else:  # too few 64-token tiles to fill the GPU twice: halve them
                variant = "tcs32"
        bm, threads = _MM_SHAPES[variant]
        grid = (col_tiles, (n + bm - 1) // bm)
        self._mm[variant, qtype].prepared_async_call(
            grid, (threads, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), n, int(y_ptr) + 4 * col0, ldy,
            int(bias_ptr or 0), int(accumulate),
        )  # fmt: skip


def _check_cols(qtype: Q, cols: int, multiple: int) -> None:
    if cols <= 0 or cols % multiple:
        raise ValueError(
            f"{qtype.name} kernels need cols a positive multiple of {multiple}, got {cols}"
        )
