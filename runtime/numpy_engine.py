"""The fp32 numpy reference engine: a model family's block on dequantized weights.

The file's weight plan (`GGUFModel.plan`) says what to load: every slot is dequantized once at
load into one contiguous fp32 array, stacked over the layers, matrices in the file's own
(n_layers, out_features, in_features) order, so each tensor decodes straight into its rows (no
temporary, no transposed copy) and each projection is one BLAS call `x @ W.T` (q|k|v and gate|up
are one slot each). The family's block (`runtime.models.<block>.forward_layer`) runs each layer;
this module owns what is common: embedding, KV cache, rotary tables, the output head. The KV
cache and the rotary tables (one per distinct rope base) are allocated at load for `max_context`
positions; a step allocates only small temporaries. Prefill is one batched causal pass over all
new tokens; a step is the same pass with one token.

This engine is the reference the CUDA engine is compared with, and the fallback backend.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import numpy as np

from runtime.config import MAX_BATCH
from runtime.engine_api import NON_FINITE, ProgressCallback, ResidencyReport
from runtime.errors import InvalidRequest, ModelLoadError, NonFiniteLogits
from runtime.expert_weights import LayerExperts
from runtime.gguf_file import GGUFModel
from runtime.model_config import ModelConfig
from runtime.models.vocab import unsampleable_ids
from runtime.numpy_layers import attention, linear, rms_norm, rope_tables
from runtime.progress import ProgressReporter
from runtime.sampling import SamplingParams, sample_from_logits

_RESIDENCY_SAMPLE = 4096  # elements sampled per weight array for the residency checksum
#: The prompt tokens one `prefill` call takes: the batcher feeds prompts in chunks this long,
#: so a long prompt holds the running batch's next token back by one chunk's time at most.
PREFILL_CHUNK = 256


@attrs.frozen
class Segment:
    """Consecutive rows of one pass that belong to one slot: `rows` tokens from `start` on."""

    slot: int
    start: int  # position of the segment's first token in the slot's sequence
    rows: int


@attrs.frozen
class LayerPass:
    """What a family's block sees of one layer in one pass (runtime.models.<block>).

    A pass holds T rows: one slot's prompt chunk (one segment), or one token of each decoding
    slot (one segment per slot). The products run over all T rows at once; attention runs per
    segment, over that slot's own cache only.
    """

    config: ModelConfig
    #: slot -> this layer's array: (out, in) matrices, (n,) vectors; an `experts` slot is a
    #: LayerExperts (runtime.expert_weights: quantized, decoded per expert)
    w: dict[str, Any]
    k_cache: np.ndarray  # (max_batch, KV, max_context, D) this layer's keys, per sequence slot
    v_cache: np.ndarray  # (max_batch, KV, max_context, D)
    cos: np.ndarray  # (T, rope_dim/2) rows of each row's position, this layer's base
    sin: np.ndarray
    segments: tuple[Segment, ...]
    window: int  # this layer's attention window (0: all earlier keys)

    def attend(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, sinks: np.ndarray | None = None
    ) -> np.ndarray:
        """Store k, v (T, KV, D) at each row's slot and position, attend q (T, H, D): (T, H * D).
        `sinks` (H,): gpt-oss's per-head sink logits (runtime.numpy_layers.attention)."""
        out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), np.float32)  # (T, H * D)
        row = 0
        for seg in self.segments:
            rows, end = slice(row, row + seg.rows), seg.start + seg.rows
            k_cache, v_cache = self.k_cache[seg.slot], self.v_cache[seg.slot]  # (KV, ctx, D)
            k_cache[:, seg.start : end] = k[rows].transpose(1, 0, 2)  # (KV, rows, D)
            v_cache[:, seg.start : end] = v[rows].transpose(1, 0, 2)
            out[rows] = attention(
                q[rows], k_cache, v_cache, seg.start, self.config.attn_scale, self.window, sinks
            )
            row += seg.rows
        return out


def block_of(name: str) -> Callable[[LayerPass, np.ndarray], None]:
    """The numpy block `runtime.models.<name>.forward_layer` (Family.block names it)."""
    try:
        return importlib.import_module(f"runtime.models.{name}").forward_layer
    except (ImportError, AttributeError):
        raise ModelLoadError(f"the cpu backend has no {name!r} block") from None


class NumpyEngine:
    backend = "cpu"

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, Any],
        *,
        max_context: int,
        quant_kind: str,
        block: Callable[[LayerPass, np.ndarray], None],
        layer_slots: tuple[str, ...],
        banned_ids: np.ndarray | None = None,
        max_batch: int = 1,
    ):
        c = self.config = config
        if not 1 <= max_batch <= MAX_BATCH:
            raise ModelLoadError(f"max_batch must be in 1..{MAX_BATCH}, got {max_batch}")
        self.max_context = max_context
        self.max_batch = max_batch
        self.prefill_chunk = PREFILL_CHUNK
        self.quant_kind = quant_kind
        #: slot -> read-only fp32 array (shapes in NumpyEngine.load), or for an `experts` slot
        #: a list of LayerExperts, one per layer
        self.w = weights
        self._block = block
        self._layer_slots = layer_slots  # the keys of `w` stacked over the layers
        #: ids never sampled (padding rows of the head: runtime.models.vocab)
        self.banned_ids = np.zeros(0, np.int64) if banned_ids is None else banned_ids
        # every slot's KV cache, allocated here once: (n_layers, max_batch, KV, max_context, D)
        shape = (c.n_layers, max_batch, c.n_kv_heads, max_context, c.head_dim)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros_like(self.k_cache)
        # one (cos, sin) pair of (max_context, rope_dim/2) tables per distinct rope base
        self.rope = {b: rope_tables(max_context, c.rope_dim, b, c.rope_yarn) for b in c.rope_bases}
        self._logits = np.zeros((max_batch, c.vocab_size), np.float32)  # each slot's last row
        self._pos = [0] * max_batch  # tokens in each slot's cache
        self._pending: tuple[tuple[int, ...], list[tuple[int]]] | None = None  # decode to run
        self._closed = False
        self._fingerprint = {name: _fingerprint(a) for name, a in self._weight_arrays()}

    # -- load ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model: GGUFModel,
        *,
        max_context: int,
        max_batch: int = 1,
        progress: ProgressCallback | None = None,
    ) -> NumpyEngine:
        c = model.config
        if c.rope_style not in ("norm", "neox"):
            raise ModelLoadError(f"{model.path}: rope style {c.rope_style!r} is not supported")
        if max_context < 1:
            raise ModelLoadError(f"max_context must be positive, got {max_context}")
        block = block_of(model.family.block)
        reporter = ProgressReporter(model.plan_bytes, progress)
        w: dict[str, np.ndarray] = {}
        for slot in model.plan.present:
            if not slot.per_layer:  # token_embd, output: (vocab, d_model), rows gathered
                recs = model.slot_records(slot, None)
                w[slot.name] = np.concatenate([r.dequantize() for r in recs])
                reporter.advance(sum(r.nbytes for r in recs))
                continue
            if slot.kind == "experts":  # kept quantized: the chosen experts decode per pass
                w[slot.name] = []
                for layer in slot.layers(c.n_layers):
                    (r,) = model.slot_records(slot, layer)
                    w[slot.name].append(LayerExperts(r.raw, r.qtype, r.shape))
                    reporter.advance(r.nbytes)
                continue
            # (n_layers, rows, cols) in the file's own (out_features, in_features) order, the
            # parts stacked along rows: each tensor decodes straight into its rows (no copy,
            # no transpose; the blocks multiply by W.T, which BLAS takes as it is)
            stacked = None
            for layer in slot.layers(c.n_layers):
                recs = model.slot_records(slot, layer)
                if stacked is None:
                    rows = sum(r.shape[0] for r in recs)
                    stacked = np.empty((c.n_layers, rows, *recs[0].shape[1:]), np.float32)
                row0 = 0
                for r in recs:
                    r.dequantize(stacked[layer, row0 : row0 + r.shape[0]])
                    row0 += r.shape[0]
                reporter.advance(sum(r.nbytes for r in recs))
            w[slot.name] = stacked
        for a in w.values():
            for array in a if isinstance(a, list) else (a,):
                if isinstance(array, np.ndarray):  # experts: memory-mapped read-only already
                    array.flags.writeable = False  # nothing may change a weight after load
        engine = cls(
            c,
            w,
            max_context=max_context,
            quant_kind=model.quant_kind,
            block=block,
            layer_slots=tuple(s.name for s in model.plan.layer_slots),
            banned_ids=unsampleable_ids(model.metadata, c.vocab_size),
            max_batch=max_batch,
        )
        reporter.finish()
        return engine

    # -- Engine protocol -----------------------------------------------------------------------

    def position(self, slot: int) -> int:
        self._flush()
        return self._pos[self._slot(slot)]

    def release(self, slot: int) -> None:
        """Also drops the slot's row from a decode not yet run (the other rows do not change)."""
        if self._pending is not None and slot in self._pending[0]:
            slots, rows = self._pending
            keep = [i for i, s in enumerate(slots) if s != slot]
            kept = (tuple(slots[i] for i in keep), [rows[i] for i in keep])
            self._pending = kept if keep else None
        self._pos[self._slot(slot)] = 0

    def prefill(self, slot: int, tokens: Sequence[int]) -> None:
        self._flush()
        self._forward([slot], [tokens], all_logits=False)

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> None:
        """Checked now, computed at the next call that needs it (as on the GPU), so the caller
        hands the step's tokens out before the pass runs (streaming stays live on one thread)."""
        self._flush()
        if len(slots) != len(tokens):
            raise InvalidRequest(f"{len(slots)} slots but {len(tokens)} tokens")
        if len(set(slots)) != len(slots):
            raise InvalidRequest(f"decode names a slot twice: {list(slots)}")
        rows = [(t,) for t in tokens]
        self._segments(slots, rows)  # the slot, context and token checks, before deferring
        self._pending = (tuple(slots), rows)

    def prefill_all_logits(self, slot: int, tokens: Sequence[int]) -> np.ndarray:
        """Like `prefill`, but returns (T, vocab) logits of every new position (teacher forcing)."""
        self._flush()
        return self._forward([slot], [tokens], all_logits=True)

    def logits(self, slot: int) -> np.ndarray:
        self._flush()
        return self._logits[self._slot(slot)].copy()

    def sample(
        self,
        slots: Sequence[int],
        params: Sequence[SamplingParams],
        histories: Sequence[Sequence[int]],
        draws: Sequence[int],
    ) -> list[int]:
        self._flush()
        ids = []
        for slot, p, history, draw in zip(slots, params, histories, draws, strict=True):
            logits = self._logits[self._slot(slot)]
            try:
                ids.append(sample_from_logits(logits, p, history, draw, banned=self.banned_ids))
            except NonFiniteLogits:
                ids.append(NON_FINITE)
        return ids

    def memory_bytes(self) -> int:
        if self._closed:
            return 0
        tables = [t for pair in self.rope.values() for t in pair]
        arrays = [a for _, a in self._weight_arrays()] + [self.k_cache, self.v_cache, *tables]
        return sum(a.nbytes for a in arrays) + self._logits.nbytes

    def check_residency(self) -> ResidencyReport:
        if self._closed:
            return ResidencyReport(False, 0, "the engine is closed: no weights are held")
        checked = 0
        held = dict(self._weight_arrays())
        for name, (ptr, shape, crc, nbytes) in self._fingerprint.items():
            a = held.get(name)
            if a is None:
                return ResidencyReport(False, checked, f"weight {name} is no longer held")
            now = _fingerprint(a)
            if now[:2] != (ptr, shape):
                return ResidencyReport(False, checked, f"weight {name} moved or changed shape")
            if now[2] != crc:
                return ResidencyReport(False, checked, f"weight {name} changed (checksum)")
            checked += nbytes
        return ResidencyReport(
            True,
            checked,
            f"{len(self._fingerprint)} weight arrays intact "
            f"(sampled checksum over {checked} bytes)",
        )

    def _weight_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) of every weight held: the fp32 arrays, and each layer's raw expert
        bytes (`slot.layer`)."""
        for name, a in self.w.items():
            if isinstance(a, list):
                for layer, experts in enumerate(a):
                    yield f"{name}.{layer}", experts.raw
            else:
                yield name, a

    def close(self) -> None:
        self._closed = True
        self._pending = None
        self.w = {}
        self.k_cache = self.v_cache = np.zeros((0, 0, 0, 0), np.float32)

    # -- the forward pass ----------------------------------------------------------------------

    # A broken model (NaN or huge weights) overflows here; numpy would print a RuntimeWarning to
    # stderr, a line that is not narration JSON. The numbers go on quietly instead, and the
    # sampler refuses the non-finite logits they lead to (NonFiniteLogits, REL-5/REL-7).
    @np.errstate(all="ignore")
    def _forward(
        self, slots: Sequence[int], tokens: Sequence[Sequence[int]], *, all_logits: bool
    ) -> np.ndarray:
        """Append tokens[i] to slots[i] for every i in one pass: one product per matrix for all
        rows, attention per slot. Returns the logits of every row (all_logits) or of each
        slot's last row, and keeps each slot's last row for `logits` and `sample`."""
        c, w = self.config, self.w
        segments, ids = self._segments(slots, tokens)
        positions = np.concatenate([np.arange(s.start, s.start + s.rows) for s in segments])
        x = w["token_embd"][ids]  # (T, d_model) residual stream, a fresh copy
        if c.embed_scale != 1.0:
            x *= np.float32(c.embed_scale)
        for i in range(c.n_layers):
            cos, sin = self.rope[c.layer_rope_base[i]]
            layer = LayerPass(
                c,
                {k: w[k][i] for k in self._layer_slots},
                self.k_cache[i],
                self.v_cache[i],
                cos[positions],  # (T, rope_dim/2)
                sin[positions],
                tuple(segments),
                c.layer_window[i],
            )
            self._block(layer, x)
        last = np.cumsum([s.rows for s in segments]) - 1  # (slots,) each slot's last row
        for s in segments:
            self._pos[s.slot] = s.start + s.rows
        head = w["token_embd"] if c.tied_output else w["output"]  # (vocab, d_model)
        rows = x if all_logits else x[last]
        logits = linear(rms_norm(rows, w["output_norm"], c.norm_eps), head)  # (rows, vocab)
        self._logits[[s.slot for s in segments]] = logits[last] if all_logits else logits
        return logits

    def _segments(
        self, slots: Sequence[int], tokens: Sequence[Sequence[int]]
    ) -> tuple[list[Segment], np.ndarray]:
        """The pass's segments and its (T,) token ids, or InvalidRequest naming what is wrong."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        segments = []
        for slot, toks in zip(slots, tokens, strict=True):
            start, n = self._pos[self._slot(slot)], len(toks)
            if n == 0:
                raise InvalidRequest("no tokens to process")
            if start + n > self.max_context:
                raise InvalidRequest(f"{start + n} tokens exceed the context ({self.max_context})")
            segments.append(Segment(slot, start, n))
        if not segments:
            raise InvalidRequest("no tokens to process")
        ids = np.fromiter((t for toks in tokens for t in toks), dtype=np.int64)  # (T,)
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InvalidRequest(f"token id out of range 0..{self.config.vocab_size - 1}")
        return segments, ids

    def _flush(self) -> None:
        """Run the deferred decode pass, if any."""
        if self._pending is not None:
            (slots, rows), self._pending = self._pending, None
            self._forward(slots, rows, all_logits=False)

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < self.max_batch:
            raise InvalidRequest(f"slot {slot} is outside 0..{self.max_batch - 1}")
        return slot


def _fingerprint(a: np.ndarray) -> tuple[int, tuple[int, ...], int, int]:
    """(data pointer, shape, crc32 of a fixed sample of elements, sampled bytes)."""
    flat = a.reshape(-1)
    idx = np.linspace(0, flat.size - 1, min(flat.size, _RESIDENCY_SAMPLE)).astype(np.int64)
    sample = flat[idx].tobytes()
    return a.ctypes.data, a.shape, zlib.crc32(sample), len(sample)
