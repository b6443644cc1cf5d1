"""Upload a GGUF model's weights to VRAM, tensor by tensor, in their quantized form.

Matrices keep the file's raw bytes (rows of GGML blocks), copied straight from the memory map.
Projections that read the same input are laid out back to back when their types agree: q|k|v
become one `blk.N.attn_qkv` allocation and gate|up one `blk.N.ffn_gate_up`, so a decode step
needs one matrix-vector launch for each group instead of three or two. Where the types differ
(mixed-quant files), each matrix gets its own allocation and the forward pass launches one
product per `Segment`, writing into the same output rows. Norm weights and biases are stored as
float32. Each allocation's checksum window (cuda.residency) is computed here from the bytes sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
from gguf import GGMLQuantizationType as Q

from cuda import residency
from cuda.ledger import Ledger
from cuda.ops import head_dim_supported
from cuda.quant_ops import QuantKernels
from runtime.errors import ModelLoadError
from runtime.gguf_file import GGUFModel, TensorRecord
from runtime.progress import ProgressReporter


@attrs.frozen
class Segment:
    """One quantized matrix in VRAM: output rows [row0, row0 + rows) of its projection."""

    ptr: int
    qtype: Q
    rows: int
    cols: int
    row0: int = 0


@attrs.frozen
class LayerWeights:
    attn_norm: int  # (d_model,) f32
    ffn_norm: int  # (d_model,) f32
    qkv: tuple[Segment, ...]  # output rows q | k | v
    qkv_bias: int | None  # (q_dim + 2 kv_dim,) f32
    attn_output: Segment
    gate_up: tuple[Segment, ...]  # output rows gate | up
    down: Segment


@attrs.frozen
class ModelWeights:
    token_embd: Segment  # (vocab, d_model)
    output_norm: int
    output: Segment  # the token_embd segment when the head is tied
    layers: tuple[LayerWeights, ...]


def _vector_f32(rec: TensorRecord) -> np.ndarray:
    if rec.qtype == Q.F32:
        return np.asarray(rec.raw).reshape(-1)  # already little-endian float32 bytes
    return rec.dequantize().astype("<f4").reshape(-1).view(np.uint8)


def _roles(model: GGUFModel) -> tuple[list[str], list[str]]:
    qkv = ["attn_qkv"] if model.has_weight("attn_qkv", 0) else ["attn_q", "attn_k", "attn_v"]
    gu = ["ffn_gate_up"] if model.has_weight("ffn_gate_up", 0) else ["ffn_gate", "ffn_up"]
    return qkv, gu


def file_bytes(model: GGUFModel) -> int:
    """Bytes of the file's tensors that `upload_weights` reads (the progress total)."""
    c = model.config
    qkv, gu = _roles(model)
    roles = [*qkv, *gu, "attn_output", "ffn_down", "attn_norm", "ffn_norm"]
    if c.qkv_bias:
        roles += ["attn_q_bias", "attn_k_bias", "attn_v_bias"]
    total = sum(model.weight(r).nbytes for r in ("token_embd", "output_norm"))
    if not c.tied_output:
        total += model.weight("output").nbytes
    return total + sum(model.weight(r, i).nbytes for r in roles for i in range(c.n_layers))


def weight_bytes(model: GGUFModel) -> int:
    """VRAM the weights take (what `upload_weights` allocates)."""
    c = model.config
    qkv, gu = _roles(model)
    total = model.weight("token_embd").nbytes + 4 * c.d_model
    if not c.tied_output:
        total += model.weight("output").nbytes
    for i in range(c.n_layers):
        recs = [model.weight(r, i) for r in [*qkv, *gu, "attn_output", "ffn_down"]]
        total += sum(r.nbytes for r in recs) + 8 * c.d_model
        if c.qkv_bias:
            total += 4 * (c.n_heads * c.head_dim + 2 * c.kv_dim)
    return total


class _Uploader:
    def __init__(self, drv: Any, ledger: Ledger, reporter: ProgressReporter):
        self.drv, self.ledger, self.reporter = drv, ledger, reporter
        self.checksums: dict[str, int] = {}

    def put(self, name: str, pieces: Sequence[np.ndarray], advance: int) -> int:
        """One allocation holding `pieces` (uint8 arrays) back to back; returns its pointer."""
        flat = [np.asarray(p).reshape(-1) for p in pieces]
        nbytes = sum(p.nbytes for p in flat)
        ptr = self.ledger.alloc(name, nbytes)
        offset = 0
        for p in flat:
            self.drv.memcpy_htod(ptr + offset, p)
            offset += p.nbytes
        self.reporter.advance(advance)
        off, length = residency.window(nbytes)
        if length:
            whole = flat[0] if len(flat) == 1 else np.concatenate(flat)
            self.checksums[name] = residency.host_checksum(whole[off : off + length])
        return ptr

    def matrices(self, name: str, recs: Sequence[TensorRecord]) -> tuple[Segment, ...]:
        """The matrices of one projection group: one allocation if their types and widths agree."""
        cols = recs[0].shape[1]
        for r in recs:
            if len(r.shape) != 2 or r.shape[1] != cols:
                raise ModelLoadError(f"{r.name}: shape {r.shape} does not fit its group")
        if all(r.qtype == recs[0].qtype for r in recs):
            ptr = self.put(name, [r.raw for r in recs], sum(r.nbytes for r in recs))
            return (Segment(ptr, recs[0].qtype, sum(r.shape[0] for r in recs), cols),)
        segs, row0 = [], 0
        for r in recs:
            segs.append(
                Segment(self.put(r.name, [r.raw], r.nbytes), r.qtype, r.shape[0], cols, row0)
            )
            row0 += r.shape[0]
        return tuple(segs)

    def vector(self, name: str, recs: Sequence[TensorRecord]) -> int:
        return self.put(name, [_vector_f32(r) for r in recs], sum(r.nbytes for r in recs))


def check_model(model: GGUFModel, max_context: int, max_chunk: int) -> None:
    """ModelLoadError for what the CUDA engine cannot run, found from the file alone (no GPU):
    sizes, rope, the head size (attention kernels) and every matrix (`check_matrices`)."""
    if max_context < 1 or max_chunk < 1:
        raise ModelLoadError(f"max_context and max_chunk must be positive: {max_context}")
    c = model.config
    if c.rope_style not in ("norm", "neox") or c.rope_dim % 2 or c.rope_dim > c.head_dim:
        raise ModelLoadError(f"{model.path}: rope {c.rope_style}/{c.rope_dim} unsupported")
    if not head_dim_supported(c.head_dim):
        raise ModelLoadError(
            f"{model.path}: head_dim {c.head_dim} unsupported by the attention kernels "
            "(a multiple of 32, at most 256)"
        )
    check_matrices(model, QuantKernels.matrix_problem)


def check_matrices(model: GGUFModel, problem: Callable[[Q, int], str | None]) -> None:
    """ModelLoadError naming the first matrix the kernels cannot take (type or shape).

    `problem(qtype, cols)` is QuantKernels.matrix_problem: checked here, before any upload, so a
    bad file fails at load rather than at a kernel's first use in some later job.
    """
    for rec in model.tensors.values():
        if len(rec.shape) == 2:
            why = problem(rec.qtype, int(rec.shape[1]))
            if why is not None:
                raise ModelLoadError(f"{model.path}: tensor {rec.name} {rec.shape}: {why}")


def upload_weights(
    drv: Any, model: GGUFModel, ledger: Ledger, reporter: ProgressReporter, problem
) -> tuple[ModelWeights, dict[str, int]]:
    """Upload every weight (after `check_matrices(model, problem)`); returns the layout and the
    checksum of each allocation's window."""
    c = model.config
    qkv_roles, gu_roles = _roles(model)
    check_matrices(model, problem)
    up = _Uploader(drv, ledger, reporter)
    (embd,) = up.matrices("token_embd", [model.weight("token_embd")])
    output_norm = up.vector("output_norm", [model.weight("output_norm")])
    output = embd if c.tied_output else up.matrices("output", [model.weight("output")])[0]
    layers = tuple(_layer(up, model, i, qkv_roles, gu_roles) for i in range(c.n_layers))
    return ModelWeights(embd, output_norm, output, layers), up.checksums


def _layer(
    up: _Uploader, model: GGUFModel, i: int, qkv_roles: list[str], gu_roles: list[str]
) -> LayerWeights:
    def w(role: str) -> TensorRecord:
        return model.weight(role, i)

    bias = None
    if model.config.qkv_bias:
        bias_recs = [w("attn_q_bias"), w("attn_k_bias"), w("attn_v_bias")]
        bias = up.vector(f"blk.{i}.attn_qkv_bias", bias_recs)
    return LayerWeights(
        attn_norm=up.vector(f"blk.{i}.attn_norm", [w("attn_norm")]),
        ffn_norm=up.vector(f"blk.{i}.ffn_norm", [w("ffn_norm")]),
        qkv=up.matrices(f"blk.{i}.attn_qkv", [w(r) for r in qkv_roles]),
        qkv_bias=bias,
        attn_output=up.matrices(f"blk.{i}.attn_output", [w("attn_output")])[0],
        gate_up=up.matrices(f"blk.{i}.ffn_gate_up", [w(r) for r in gu_roles]),
        down=up.matrices(f"blk.{i}.ffn_down", [w("ffn_down")])[0],
    )
