"""Launchers for the engine's own (non-quantized) kernels: RMSNorm (plain and gemma3's post-norm
residual add), rotary + KV write (with optional per-head q/k RMSNorm), attention (optional
sliding window and scale), the gated activations, adds, sampling and its mask, checksums.

Like `cuda.quant_ops`, every launch is a `prepared_async_call` on the caller's stream with no
host sync and no allocation, and no argument that changes from one decode step to the next
(positions are read from device memory): the decode step is CUDA-graph capturable. `launches`
counts the launches made, which the graph capture reports.

`pdl=True` (decode-step launchers) launches through the driver API with programmatic dependent
launch (cuda/launch.py, cuda/kernels/pdl.cuh): the kernel may start while the previous one
finishes. Every kernel here waits (griddepcontrol.wait) before touching what earlier kernels
wrote, so either way is correct; the decode step's first kernel must not use it (attention reads
the position and the KV cache of earlier steps before its wait).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from cuda.compile import load_driver_module, load_module
from cuda.quant_ops import GLU_KERNELS

log = logging.getLogger(__name__)

_NORM_THREADS = 256
_ROPE_THREADS = 128
_ATTN_THREADS = 128  # AW * 32 in attention.cu
_SAMPLE_THREADS = 1024  # ST in sampling.cu
ARGMAX_BLOCKS = 64  # blocks of the multi-block greedy argmax (its scratch has this many slots)
_EW_THREADS = 256
#: decode attention loads its first keys before the PDL wait (ATTN_PRE in attention.cu)
ATTN_PRELOAD = True
#: prefill attention: "simt" (attn_prefill.cu, fp32, a block per query and head: the validated
#: default) or "tc" (attn_prefill_tc.cu, tensor cores, 64 queries of a head per block, head_dim
#: <= 128; written for qwen2's pp512, decision 0012). "tc" becomes the default once its tests
#: and bench_cuda's pp512 have run on a GPU.
PREFILL_ATTENTION = "simt"
_TC_QUERIES = 64  # QT in attn_prefill_tc.cu


def _module(filename: str, defines: dict[str, Any] | None = None):
    # PyCUDA reports nvcc's stderr as warnings; log them instead of failing under -W error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = load_module(filename, defines=defines)
    for w in caught:
        log.warning("nvcc on %s: %s", filename, w.message)
    return module


def _driver_module(filename: str, defines: dict[str, Any] | None = None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = load_driver_module(filename, defines=defines)
    for w in caught:
        log.warning("nvcc on %s: %s", filename, w.message)
    return module


class _Pair:
    """A kernel as PyCUDA launches it and as the driver API launches it with PDL."""

    def __init__(self, module: Any, dmodule: Any, name: str, arg_types: str):
        self.plain = module.get_function(name).prepare(arg_types)
        self.pdl = dmodule.get_function(name).prepare(arg_types)

    def __call__(self, grid, block, stream, *args: Any, pdl: bool = False) -> None:
        if pdl:
            self.pdl.prepared_async_call(grid, block, stream, *args, pdl=True)
        else:
            self.plain.prepared_async_call(grid, block, stream, *args)


def _blocks(n: int, threads: int, cap: int = 4096) -> int:
    return max(1, min(cap, (n + threads - 1) // threads))


def head_dim_supported(head_dim: int) -> bool:
    """Whether the attention kernels build for this head size (HEAD_DIM in attention.cu)."""
    return 0 < head_dim <= 256 and head_dim % 32 == 0


def tc_attention_supported(head_dim: int) -> bool:
    """Whether the tensor-core prefill attention builds for this head size."""
    return head_dim_supported(head_dim) and head_dim <= 128


def sources(head_dim: int) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Ops' modules: key -> (file in cuda/kernels, defines); for cuda.compile.prefetch too."""
    files = {"norm": ("norm.cu", None), "rope": ("rope.cu", None)}
    files |= {"ew": ("elementwise.cu", None), "smp": ("sampling.cu", None)}
    files["attn"] = ("attention.cu", {"HEAD_DIM": head_dim, "ATTN_PRE": int(ATTN_PRELOAD)})
    files["attn_pre"] = ("attn_prefill.cu", {"HEAD_DIM": head_dim})
    if tc_attention_supported(head_dim):
        files["attn_tc"] = ("attn_prefill_tc.cu", {"HEAD_DIM": head_dim})
    return files


class Ops:
    """The engine's kernels for one head size, compiled (or taken from cache) at init."""

    def __init__(self, head_dim: int):
        if not head_dim_supported(head_dim):
            raise ValueError(f"attention kernels need head_dim a multiple of 32 <= 256: {head_dim}")
        files = sources(head_dim)
        mods = {k: _module(f, d) for k, (f, d) in files.items()}
        dmods = {k: _driver_module(f, d) for k, (f, d) in files.items()}

        def pair(key: str, name: str, arg_types: str) -> _Pair:
            return _Pair(mods[key], dmods[key], name, arg_types)

        ew, smp = mods["ew"], mods["smp"]
        self._rms = pair("norm", "rms_norm", "PPPif")
        self._add_rms = pair("norm", "add_rms_norm", "PPPPPif")
        self._rope = pair("rope", "rope_kv_write", "PiPPPPPiiiiiiPPf")
        self._advance = pair("rope", "advance_position", "Pi")
        self._glu = {act: pair("ew", name, "PPii") for act, name in GLU_KERNELS.items()}
        self._add = pair("ew", "add_inplace", "PPi")
        self._checksum = ew.get_function("checksum_words").prepare("PlP")
        # each attention kernel and its gpt-oss twin with a sink logit per head (one more P)
        self._attn_dec = pair("attn", "attn_decode", "PPPPPPPiiifi")
        self._attn_dec_sinks = pair("attn", "attn_decode_sinks", "PPPPPPPiiifiP")
        pre = mods["attn_pre"]
        self._attn_pre = pre.get_function("attn_prefill").prepare("PPPPPiiifi")
        self._attn_pre_sinks = pre.get_function("attn_prefill_sinks").prepare("PPPPPiiifiP")
        self._attn_tc = self._attn_tc_sinks = None
        if "attn_tc" in mods:
            tc = mods["attn_tc"]
            self._attn_tc = tc.get_function("attn_prefill_tc").prepare("PPPPPiiiifi")
            self._attn_tc_sinks = tc.get_function("attn_prefill_tc_sinks").prepare("PPPPPiiiifiP")
        self._attn_rope = pair("attn", "attn_decode_rope", "PPPPPPPPPPPfiiiiifi")
        self._attn_rope_sinks = pair("attn", "attn_decode_rope_sinks", "PPPPPPPPPPPfiiiiifiP")
        self._attn_rows = pair("attn", "attn_decode_rope_rows", "PPPPPPPPPPPfiiiiifiPPiil")
        self._greedy = smp.get_function("sample_greedy").prepare("PiPidPP")
        self._argmax = pair("smp", "argmax_multi", "PiPPPPPi")
        self._full = smp.get_function("sample_full").prepare("PiPidPdidddPP")
        self._mask = pair("smp", "mask_logits", "PPPi")
        self._argmax_rows = pair("smp", "argmax_rows", "PiPPPPPPiiiP")
        self._mask_rows = pair("smp", "mask_logits_rows", "PPPiPi")
        self._gather_ids = pair("smp", "gather_ids", "PPiiP")
        self._scatter_ids = pair("smp", "scatter_ids", "PPiiP")
        self.head_dim = head_dim
        self.launches = 0

    def rms_norm(self, x, w, y, n_rows: int, n_cols: int, eps: float, stream, pdl=False) -> None:
        """y (n_rows, n_cols) = rmsnorm(x) * w; y may be x."""
        self._rms((n_rows, 1), (_NORM_THREADS, 1, 1), stream, x, w, y, n_cols, eps, pdl=pdl)
        self.launches += 1

    def add_rms_norm(
        self, y, w_post, x, n_rows: int, n_cols: int, eps: float, stream, *, w_next=None,
        xn=None, pdl=False,
    ) -> None:  # fmt: skip
        """x (n_rows, n_cols) += rmsnorm(y) * w_post (gemma3's post-attention / post-FFN norm);
        with `xn`, also xn = rmsnorm(x) * w_next (the next projection's input, same launch).
        xn may be y; x may not."""
        if (xn is None) != (w_next is None):
            raise ValueError("xn and w_next go together")
        self._add_rms(
            (n_rows, 1), (_NORM_THREADS, 1, 1), stream, y, w_post, x, w_next or 0, xn or 0,
            n_cols, eps, pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def rope_kv_write(
        self, qkv, n_tokens, pos, cos, sin, k_cache, v_cache, *, n_heads, n_kv, rope_half,
        max_ctx, neox, stream, q_norm=None, k_norm=None, norm_eps=0.0, pdl=False,
    ) -> None:  # fmt: skip
        """Rotate q, k of qkv (n_tokens, q|k|v) in place; k, v -> fp16 cache at *pos + t.
        q_norm / k_norm (head_dim floats each, gemma3): RMSNorm of every head first."""
        self._rope(
            (n_tokens, 1), (_ROPE_THREADS, 1, 1), stream, qkv, n_tokens, pos, cos, sin,
            k_cache, v_cache, n_heads, n_kv, self.head_dim, rope_half, max_ctx, int(neox),
            q_norm or 0, k_norm or 0, float(norm_eps), pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def advance_position(self, pos, by: int, stream) -> None:  # prefill only: no PDL
        self._advance((1, 1), (32, 1, 1), stream, pos, by)
        self.launches += 1

    def _scale(self, scale: float | None) -> float:
        return self.head_dim**-0.5 if scale is None else float(scale)

    def attn_decode(
        self, qkv, k_cache, v_cache, out, pos, part, counters, *, n_heads, n_kv, max_ctx,
        n_splits, stream, scale=None, window=0, sinks=None, pdl=False,
    ) -> None:  # fmt: skip
        """out (n_heads * head_dim) for the one query of qkv over the keys it sees: *pos + 1
        cached keys, the last `window` of them when window > 0. scale: 1/sqrt(head_dim) if None.
        sinks: (n_heads,) f32, gpt-oss's sink logit joining each head's softmax."""
        args = [qkv, k_cache, v_cache, out, pos, part, counters, n_heads, n_kv, max_ctx]
        args += [self._scale(scale), int(window)]
        kernel = self._attn_dec if sinks is None else self._attn_dec_sinks
        extra = () if sinks is None else (sinks,)
        kernel((n_heads, n_splits), (_ATTN_THREADS, 1, 1), stream, *args, *extra, pdl=pdl)
        self.launches += 1

    def attn_decode_rope(
        self, qkv, k_cache, v_cache, out, pos, part, counters, cos, sin, *, n_heads, n_kv,
        max_ctx, rope_half, neox, n_splits, stream, q_norm=None, k_norm=None, norm_eps=0.0,
        scale=None, window=0, sinks=None, pdl=False,
    ) -> None:  # fmt: skip
        """The fused decode attention: (per-head q/k RMSNorm,) rope of q and the new k, KV write,
        attention (qkv is pre-rope). neox needs rope_half % (head_dim / 32) == 0 (see
        `rope_fusable`). window, scale, sinks: as `attn_decode`."""
        kernel = self._attn_rope if sinks is None else self._attn_rope_sinks
        extra = () if sinks is None else (sinks,)
        kernel(
            (n_heads, n_splits), (_ATTN_THREADS, 1, 1), stream, qkv, k_cache, v_cache, out, pos,
            part, counters, cos, sin, q_norm or 0, k_norm or 0, float(norm_eps), n_heads, n_kv,
            max_ctx, rope_half, int(neox), self._scale(scale), int(window), *extra, pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def attn_decode_rope_rows(
        self, qkv, k_cache, v_cache, out, pos_all, part, counters, cos, sin, *, rows, slots,
        qkv_stride, out_stride, slot_kv, n_heads, n_kv, max_ctx, rope_half, neox, max_splits,
        stream, q_norm=None, k_norm=None, norm_eps=0.0, scale=None, window=0, sinks=None,
        pdl=False,
    ) -> None:  # fmt: skip
        """attn_decode_rope for `rows` queries of the batched step: row r is slot slots[r]
        (int32, device), its q|k|v and output rows qkv_stride / out_stride floats apart, its
        cache slot_kv halves past slot 0's (k_cache / v_cache: slot 0's layer), its position
        pos_all[slot]; part and counters hold a row each (n_heads x MAX_SPLITS partials).
        Each row takes the split count its length gives (forward.splits_for), as the
        single-sequence step does; `max_splits` (the grid) is the most any row needs."""
        self._attn_rows(
            (n_heads, max_splits, rows), (_ATTN_THREADS, 1, 1), stream, qkv, k_cache, v_cache,
            out, pos_all, part, counters, cos, sin, q_norm or 0, k_norm or 0, float(norm_eps),
            n_heads, n_kv, max_ctx, rope_half, int(neox), self._scale(scale), int(window),
            sinks or 0, slots, int(qkv_stride), int(out_stride), int(slot_kv), pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def rope_fusable(self, rope_half: int, neox: bool) -> bool:
        return not neox or rope_half % (self.head_dim // 32) == 0

    def attn_prefill(
        self, qkv, k_cache, v_cache, out, pos, n_tokens, *, n_heads, n_kv, max_ctx, stream,
        scale=None, window=0, sinks=None, kernel: str | None = None,
    ) -> None:  # fmt: skip
        """out (n_tokens, n_heads * head_dim): causal attention of the chunk over the cache
        (query at position p sees keys p - window + 1 .. p when window > 0, else 0 .. p).
        sinks: as `attn_decode`. `kernel`: "simt" or "tc" (tests, benchmarks); default
        PREFILL_ATTENTION where it builds."""
        kernel = kernel or PREFILL_ATTENTION
        extra = () if sinks is None else (sinks,)
        if kernel == "tc" and self._attn_tc is not None:
            fn = self._attn_tc if sinks is None else self._attn_tc_sinks
            fn.prepared_async_call(
                ((n_tokens + _TC_QUERIES - 1) // _TC_QUERIES, n_heads), (_ATTN_THREADS, 1, 1),
                stream, qkv, k_cache, v_cache, out, pos, n_tokens, n_heads, n_kv, max_ctx,
                self._scale(scale), int(window), *extra,
            )  # fmt: skip
        elif kernel in ("simt", "tc"):  # tc falls back where it does not build (head_dim 256)
            fn = self._attn_pre if sinks is None else self._attn_pre_sinks
            fn.prepared_async_call(
                (n_tokens, n_heads), (_ATTN_THREADS, 1, 1), stream, qkv, k_cache, v_cache, out,
                pos, n_heads, n_kv, max_ctx, self._scale(scale), int(window), *extra,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown prefill attention kernel {kernel!r}")
        self.launches += 1

    def glu(self, gate_up, h, d_ff: int, n: int, stream, *, act: str = "silu", pdl=False) -> None:
        """h (n, d_ff) = act(gate) * up of gate_up (n, 2 d_ff); act "silu" (SwiGLU) or
        "gelu_tanh" (gemma3)."""
        if act not in self._glu:
            raise ValueError(f"unknown activation {act!r} (one of {sorted(self._glu)})")
        grid = (_blocks(n * d_ff, _EW_THREADS), 1)
        self._glu[act](grid, (_EW_THREADS, 1, 1), stream, gate_up, h, d_ff, n, pdl=pdl)
        self.launches += 1

    def add(self, x, y, n: int, stream, pdl=False) -> None:
        """x[:n] += y[:n] (float32)."""
        grid = (_blocks(n, _EW_THREADS), 1)
        self._add(grid, (_EW_THREADS, 1, 1), stream, x, y, n, pdl=pdl)
        self.launches += 1

    def checksum(self, ptr, n_words: int, out, stream) -> None:
        """*out (uint64, zeroed by the caller) += sum_i word_i * (2 i + 1) over n_words words."""
        grid = (_blocks(n_words, _EW_THREADS, cap=256), 1)
        self._checksum.prepared_async_call(grid, (_EW_THREADS, 1, 1), stream, ptr, n_words, out)
        self.launches += 1

    def sample_greedy(self, logits, vocab, pen_ids, n_pen, penalty, marks, out, stream) -> None:
        self._greedy.prepared_async_call(
            (1, 1), (_SAMPLE_THREADS, 1, 1), stream, logits, vocab, pen_ids, n_pen, penalty,
            marks, out,
        )  # fmt: skip
        self.launches += 1

    def argmax(
        self, logits, vocab, part_v, part_i, counter, out, stream, *, pos=0, advance=0, pdl=False
    ) -> None:
        """*out = argmax(logits) (lowest id among ties) over ARGMAX_BLOCKS blocks; part_v/part_i
        hold ARGMAX_BLOCKS slots, counter (uint32) is 0 at rest. With a `pos` pointer the last
        block also does *pos += advance (the decode step's position bump, one launch fewer)."""
        self._argmax(
            (ARGMAX_BLOCKS, 1), (256, 1, 1), stream, logits, vocab, part_v, part_i, counter, out,
            pos, advance, pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def argmax_rows(
        self, logits, vocab, part_v, part_i, counters, ids, pos_all, slots, *, rows,
        logit_stride, ids_stride, scratch, out_rows, stream, pdl=False,
    ) -> None:  # fmt: skip
        """`argmax` for each of `rows` rows of the batched step (row r: slot slots[r]'s logits
        -> ids[slot * ids_stride] and out_rows[r], pos_all[slot] += 1 unless slot == scratch);
        part_v / part_i / counters hold ARGMAX_BLOCKS / ARGMAX_BLOCKS / 1 entries per row."""
        self._argmax_rows(
            (ARGMAX_BLOCKS, rows), (256, 1, 1), stream, logits, vocab, part_v, part_i, counters,
            ids, pos_all, slots, int(logit_stride), int(ids_stride), int(scratch), out_rows,
            pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def mask_logits_rows(self, logits, ids, saved, n, slots, rows, logit_stride, stream, pdl=False):
        """`mask_logits` on the logits and saved rows of slots[0..rows)."""
        grid = (_blocks(n, _EW_THREADS), rows)
        self._mask_rows(
            grid, (_EW_THREADS, 1, 1), stream, logits, ids, saved, n, slots, int(logit_stride),
            pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def gather_ids(self, ids, slots, ids_stride, rows, ids_rows, stream, pdl=False) -> None:
        """ids_rows[r] = ids[slots[r] * ids_stride] for r < rows (the batched step's input)."""
        self._gather_ids((1, 1), (64, 1, 1), stream, ids, slots, int(ids_stride), rows, ids_rows,
                         pdl=pdl)  # fmt: skip
        self.launches += 1

    def scatter_ids(self, out_rows, slots, ids_stride, rows, ids, stream, pdl=False) -> None:
        """ids[slots[r] * ids_stride] = out_rows[r] for r < rows (the step's choices back)."""
        self._scatter_ids((1, 1), (64, 1, 1), stream, out_rows, slots, int(ids_stride), rows, ids,
                          pdl=pdl)  # fmt: skip
        self.launches += 1

    def mask_logits(self, logits, ids, saved, n: int, stream, pdl=False) -> None:
        """logits[ids[j]] = MASKED_LOGIT (-3e38: finite, never sampled; sampling.cu) for j < n
        (distinct int32 ids; a non-finite logit stays, for the samplers' flag), the old values
        into saved[j]."""
        grid = (_blocks(n, _EW_THREADS), 1)
        self._mask(grid, (_EW_THREADS, 1, 1), stream, logits, ids, saved, n, pdl=pdl)
        self.launches += 1

    def sample_full(
        self, logits, vocab, pen_ids, n_pen, penalty, marks, *, temperature, top_k, top_p, min_p,
        u, xs, out, stream,
    ) -> None:  # fmt: skip
        self._full.prepared_async_call(
            (1, 1), (_SAMPLE_THREADS, 1, 1), stream, logits, vocab, pen_ids, n_pen, penalty,
            marks, temperature, top_k, top_p, min_p, u, xs, out,
        )  # fmt: skip
        self.launches += 1
