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

from cuda import matvec_variants as mvv
from cuda.compile import load_driver_module, load_module, prefetch
from cuda.quant_rows import RowProducts

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
    Q.MXFP4: ("mxfp4", 32),  # gpt-oss's experts (ggml_blocks.cuh)
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
#: quant_matvec.cu built with GGML_FAST_CVT=1 (exact integer->float without I2F, see
#: ggml_blocks.cuh; the mr variants always are). Off until bench_matvec_variants.py has timed it.
FAST_CVT = False
#: which decode variant runs each product: cuda/matvec_variants.py (MATVEC_DEFAULTS)
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


def _mr_types(mr) -> list[Q]:
    """The weight types whose mr builds load: mr None (those the defaults need: every type
    when any default names an mr variant), False / True (none / all), or some qtypes."""
    if mr is None:
        mr = mvv.uses_mr()
    if mr is True:
        return list(_TYPES)
    if mr is False:
        return []
    return [Q(t) for t in mr]


def mr_sources(qtypes) -> list[tuple]:
    """(file, defines) of the mr builds for these types: mv, norm and glu per type, and seg
    (every type in one build) when any type is asked for."""
    specs = []
    for qtype in qtypes:
        struct, suffix = Q(qtype).name, _TYPES[Q(qtype)][0]
        for kind in ("mv", "norm", "glu"):
            specs.append(("quant_matvec_mr.cu", mvv.mr_defines(kind, struct, suffix)))
    if specs:
        specs.append(("quant_matvec_mr.cu", mvv.mr_defines("seg")))
    return specs


def sources(
    batched_loads: bool | None = None, preload: bool | None = None,
    fast_cvt: bool | None = None, mr=None,
) -> list[tuple]:  # fmt: skip
    """(file in cuda/kernels, defines) of each module QuantKernels loads (matvec first);
    None: the module's current BATCHED_LOADS / PRELOAD / FAST_CVT and the defaults' mr builds,
    as QuantKernels takes them."""
    batched_loads = BATCHED_LOADS if batched_loads is None else batched_loads
    preload = PRELOAD if preload is None else preload
    fast_cvt = FAST_CVT if fast_cvt is None else fast_cvt
    matvec = {"MV_BATCH": int(batched_loads), "MV_PRE": int(preload)}
    if fast_cvt:  # absent = 0, so the default build's cache key is the one it always had
        matvec["GGML_FAST_CVT"] = 1
    base = [("quant_matvec.cu", matvec), ("quant_embed.cu", None), ("quant_matmul.cu", None)]
    return base + mr_sources(_mr_types(mr))


class QuantKernels(RowProducts):
    """The quant kernels of the current CUDA context, compiled (or loaded from cache) at init.

    `batched_loads` compiles the matvec kernels with their branch-free batched slot loop
    (MV_BATCH=1); None takes the module default BATCHED_LOADS. `preload` likewise (PRELOAD),
    `fast_cvt` (FAST_CVT). `mr`: which weight types get the mr variants (quant_matvec_mr.cu):
    None those the defaults need, True every type, False none, or a list of qtypes.
    """

    def __init__(
        self, *, batched_loads: bool | None = None, preload: bool | None = None,
        fast_cvt: bool | None = None, mr=None,
    ) -> None:  # fmt: skip
        import pycuda.driver as drv

        self.batched_loads = BATCHED_LOADS if batched_loads is None else bool(batched_loads)
        self.preload = PRELOAD if preload is None else bool(preload)
        self.fast_cvt = FAST_CVT if fast_cvt is None else bool(fast_cvt)
        self.mr_types = _mr_types(mr)
        # the decode step's kernels load through the driver API: PDL-capable (cuda/launch.py)
        specs = sources(self.batched_loads, self.preload, self.fast_cvt, self.mr_types)
        if self.mr_types:  # up to 25 builds: nvcc in parallel (a no-op once cached)
            prefetch(specs)
        mv = _module("quant_matvec.cu", specs[0][1], driver=True)
        emb, mm = _module("quant_embed.cu", driver=True), _module("quant_matmul.cu")
        #: (kind, variant, qtype or None, act or None) -> prepared decode kernel
        self._dec: dict[tuple, Any] = {}
        self._resident: dict[int, int] = {}  # id(kernel) -> grid of a persistent variant
        self._embed: dict[Q, Any] = {}
        self._mm: dict[tuple[str, Q], Any] = {}
        self._prepare_decode(mv, "base", None, None)  # matvec_seg, matvec_seg_norm
        for qtype, (suffix, _) in _TYPES.items():
            self._prepare_decode(mv, "base", qtype, suffix)
            self._embed[qtype] = emb.get_function(f"embed_{suffix}").prepare("PiPPf")
            for variant in _MM_SHAPES:
                fn = mm.get_function(f"matmul_{variant}_{suffix}")
                self._mm[variant, qtype] = fn.prepare(_MM_ARGS)
        mr_specs = iter(specs[3:])
        self._rows = {}  # the batched decode step's kernels (cuda/quant_rows.py), same builds
        for qtype in self.mr_types:
            for _kind in ("mv", "norm", "glu"):  # one build each, in mr_sources' order
                module = _module(*next(mr_specs), driver=True)
                self._prepare_decode(module, "mr", qtype, _TYPES[qtype][0], only=_kind)
                self._prepare_rows(module, _kind, qtype, _TYPES[qtype][0], GLU_KERNELS)
        if self.mr_types:
            module = _module(*next(mr_specs), driver=True)
            self._prepare_decode(module, "mr", None, None)
            self._prepare_rows(module, "seg", None, None, GLU_KERNELS)
        self._embed_plain = {
            Q.F32: emb.get_function("embed_plain_f32").prepare("PiPPf"),
            Q.F16: emb.get_function("embed_plain_f16").prepare("PiPPf"),
        }
        dev = drv.Context.get_device()
        self.num_sms = dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)

    def _prepare_decode(self, module, family: str, qtype, suffix, only: str | None = None):
        """Prepare the decode kernels of `family` ("base" / "mr") that `module` holds: those of
        every kind (or `only` one) for `qtype`, or the segmented ones (qtype None: they take
        every type; named kernel, and kernel + "_norm" for the fused RMSNorm)."""
        for kind in ("seg",) if qtype is None else (only,) if only else ("mv", "norm", "glu"):
            for name, var in mvv.VARIANTS[kind].items():
                if var.module != family:
                    continue
                if kind == "seg":
                    for norm in (False, True):
                        kname = var.kernel + ("_norm" if norm else "")
                        self._dec[kind, name, None, norm] = module.get_function(kname).prepare(
                            _SEG_ARGS
                        )
                elif kind == "glu":
                    for act, part in GLU_KERNELS.items():
                        fn = module.get_function(f"{var.kernel.format(act=part)}_{suffix}")
                        self._dec[kind, name, qtype, act] = fn.prepare(_NORM_ARGS)
                else:
                    letters = _ARGS if kind == "mv" else _NORM_ARGS
                    fn = module.get_function(f"{var.kernel}_{suffix}").prepare(letters)
                    self._dec[kind, name, qtype, None] = fn

    def _resident_blocks(self, fn, var) -> int:
        """The grid of a persistent variant: as many blocks as are resident at once."""
        key = id(fn)
        if key not in self._resident:
            self._resident[key] = fn.max_active_blocks(32 * var.wpb) * self.num_sms
        return self._resident[key]

    def _decode(self, kind: str, qtype, rows: int, cols: int, name: str | None, extra=None):
        """(prepared kernel, Variant) of this product: `name`, else the default variant."""
        name = name or mvv.default_variant(kind, qtype, rows, cols)
        var = mvv.variant(kind, name)
        fn = self._dec.get((kind, name, None if kind == "seg" else qtype, extra))
        if fn is None:
            raise ValueError(
                f"{kind} variant {name!r} is not loaded for {Q(qtype).name}: build "
                f"QuantKernels(mr=...) with that type (loaded: {[t.name for t in self.mr_types]})"
            )
        return fn, var

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

        `variant` forces a kernel (a name of cuda.matvec_variants.VARIANTS["mv"]: "plain",
        "tall", "wide", "wide4", "mr-..."; for tests and benchmarks), else MATVEC_DEFAULTS'.
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if rows <= 0:
            return
        fn, var = self._decode("mv", qtype, rows, cols, variant)
        fn.prepared_async_call(
            (var.blocks(rows), 1), (32 * var.wpb, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(y_ptr), int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_norm(
        self, qtype, w_ptr: int, rows: int, cols: int, x_ptr: int, norm_w_ptr: int, eps: float,
        y_ptr: int, stream, *, accumulate: bool = False, variant: str | None = None,
        pdl: bool = False,
    ) -> None:  # fmt: skip
        """y (rows,) = W @ (rmsnorm(x) * norm_w) (+ the old y): RMSNorm fused into the product.

        x, norm_w: (cols,) float32; rmsnorm(x) = x / sqrt(mean(x^2) + eps). `variant`: "plain",
        "tall" or "mr-..." (default: MATVEC_DEFAULTS', by shape as for `matvec`).
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if rows <= 0:
            return
        fn, var = self._decode("norm", qtype, rows, cols, variant)
        blocks = var.blocks(rows)
        if var.persistent:
            if cols > var.max_cols():
                raise ValueError(
                    f"norm variant {variant!r} takes rows of <= {var.max_cols()} values"
                )
            blocks = min(blocks, self._resident_blocks(fn, var))
        fn.prepared_async_call(
            (blocks, 1), (32 * var.wpb, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(y_ptr),
            int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_norm_glu(
        self, qtype, w_ptr: int, d_ff: int, cols: int, x_ptr: int, norm_w_ptr: int, eps: float,
        h_ptr: int, stream, *, act: str = "silu", accumulate: bool = False, pdl: bool = False,
        variant: str | None = None,
    ) -> None:  # fmt: skip
        """h (d_ff,) = act(W_gate @ xn) * (W_up @ xn), xn = rmsnorm(x) * norm_w (+ the old h).

        act: "silu" (SwiGLU: llama, qwen2) or "gelu_tanh" (gemma3's GELU, tanh approximation).
        W is gate | up stacked: (2 * d_ff, cols) raw blocks, gate rows first (the engine's
        ffn_gate_up layout). One launch replaces norm, gate|up product and the activation.
        `variant`: "plain" or "mr-..." (default: MATVEC_DEFAULTS').
        """
        qtype, _, qk = self._block(qtype)
        _check_cols(qtype, cols, qk)
        if act not in GLU_KERNELS:
            raise ValueError(f"unknown activation {act!r} (one of {sorted(GLU_KERNELS)})")
        if d_ff <= 0:
            return
        fn, var = self._decode("glu", qtype, d_ff, cols, variant, act)
        fn.prepared_async_call(
            (var.blocks(d_ff), 1), (32 * var.wpb, 1, 1), stream,
            int(w_ptr), d_ff, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(h_ptr),
            int(accumulate), pdl=pdl,
        )  # fmt: skip

    def matvec_seg(
        self, segments, cols: int, x_ptr: int, y_ptr: int, stream, *, norm_w_ptr: int | None = None,
        eps: float = 0.0, bias_ptr: int | None = None, accumulate: bool = False, pdl: bool = False,
        variant: str | None = None,
    ) -> None:  # fmt: skip
        """y = concat_s(W_s @ xn) (+ bias) (+ the old y) in one launch: the segmented product.

        `segments`: up to MAX_SEGMENTS (qtype, w_ptr, rows) of matrices that read the same x and
        fill consecutive output rows (q | k | v of a mixed-quant file), each of its own type.
        xn = rmsnorm(x) * norm_w when `norm_w_ptr` is given (the fused decode RMSNorm), else x.
        `bias_ptr`: one float per output row (sum of the segments' rows), added at the end.
        `variant`: "plain" or "mr-..." (default: MATVEC_DEFAULTS', by cols).
        """
        segments = list(segments)
        args, total = self._seg_args(segments, cols)
        if total <= 0:
            return
        norm = norm_w_ptr is not None
        fn, var = self._decode("seg", segments[0][0], total, cols, variant, norm)
        groups = sum((r + var.outs - 1) // var.outs for _, _, r in segments)
        fn.prepared_async_call(
            ((groups + var.wpb - 1) // var.wpb, 1), (32 * var.wpb, 1, 1), stream,
            cols, int(x_ptr), int(norm_w_ptr or 0), float(eps), int(y_ptr), int(bias_ptr or 0),
            int(accumulate), *args, pdl=pdl,
        )  # fmt: skip

    def _seg_args(self, segments, cols: int) -> tuple[list[int], int]:
        """The segmented kernels' (W, type code, rows) triples, padded to MAX_SEGMENTS, and the
        segments' total rows; ValueError for a bad segment."""
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
        return args, sum(r for _, _, r in segments)

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
