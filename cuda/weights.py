"""Upload a GGUF model's weights to VRAM, slot by slot of its weight plan, in quantized form.

The file's weight plan (`GGUFModel.plan`, runtime.models) says what to upload: one allocation
per slot and layer, named by the slot (`Slot.alloc`). Matrices keep the file's raw bytes (rows
of GGML blocks), copied straight from the memory map. A slot of several matrices (q|k|v, gate|up:
projections that read the same input) is laid out back to back when their types agree, as one
`blk.N.attn_qkv` or `blk.N.ffn_gate_up` allocation, so a decode step needs one matrix-vector
launch per group. Where the types differ (mixed-quant files), each matrix gets its own
allocation and the forward pass launches one product per `Segment`, writing into the same output
rows. Vector slots (norm weights, biases) are stored as float32. Each allocation's checksum
window (cuda.residency) is computed here from the bytes sent. `weight_bytes` sums the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
from gguf import GGMLQuantizationType as Q

from cuda import residency
from cuda.ledger import Ledger
from cuda.models import BLOCKS
from cuda.ops import head_dim_supported
from cuda.quant_ops import QuantKernels
from runtime.errors import ModelLoadError
from runtime.gguf_file import GGUFModel, TensorRecord
from runtime.models.plan import Slot
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
class ExpertStack:
    """A mixture-of-experts FFN's matrices in VRAM: (n_experts, rows, cols) rows of GGML blocks,
    the file's bytes (expert e's row r at (e * rows + r) * row bytes; cuda/kernels/moe.cu)."""

    ptr: int
    qtype: Q
    n_experts: int
    rows: int
    cols: int


@attrs.frozen
class LayerWeights:
    """One layer's device pointers, a field per slot of the plan (fields of slots the file or
    the family lacks are None)."""

    attn_norm: int  # (d_model,) f32
    ffn_norm: int  # (d_model,) f32
    qkv: tuple[Segment, ...]  # output rows q | k | v
    attn_output: Segment
    gate_up: tuple[Segment, ...] | None = None  # output rows gate | up (dense FFN)
    down: Segment | None = None
    qkv_bias: int | None = None  # (q_dim + 2 kv_dim,) f32
    q_norm: int | None = None  # gemma3: (head_dim,) f32, per-head RMSNorm of q
    k_norm: int | None = None  # gemma3: (head_dim,) f32
    post_attn_norm: int | None = None  # gemma3: (d_model,) f32, on the attention output
    post_ffn_norm: int | None = None  # gemma3: (d_model,) f32, on the FFN output
    # gpt-oss (runtime/models/gpt_oss.py's plan): attention sinks and output bias, the router
    # and its bias, the experts' stacks and their biases (n_experts, rows) f32
    attn_sinks: int | None = None  # (n_heads,) f32
    attn_output_bias: int | None = None  # (d_model,) f32
    router: Segment | None = None  # (n_experts, d_model)
    router_bias: int | None = None
    gate_exps: ExpertStack | None = None  # (n_experts, expert d_ff, d_model)
    up_exps: ExpertStack | None = None
    down_exps: ExpertStack | None = None  # (n_experts, d_model, expert d_ff)
    gate_exps_bias: int | None = None
    up_exps_bias: int | None = None
    down_exps_bias: int | None = None


#: matrix slots uploaded as a group of segments (the others are one Segment)
GROUPS = frozenset({"qkv", "gate_up"})


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


def file_bytes(model: GGUFModel) -> int:
    """Bytes of the file's tensors that `upload_weights` reads (the progress total)."""
    return model.plan_bytes


def slot_bytes(model: GGUFModel, slot: Slot, layer: int | None) -> int:
    """VRAM of one slot's allocation(s): the raw bytes of matrices (and expert stacks), float32
    for vectors."""
    recs = model.slot_records(slot, layer)
    if slot.kind in ("matrix", "experts"):
        return sum(r.nbytes for r in recs)
    return 4 * sum(int(np.prod(r.shape)) for r in recs)


def weight_bytes(model: GGUFModel) -> int:
    """VRAM the weights take (what `upload_weights` allocates)."""
    n_layers = model.config.n_layers
    return sum(
        slot_bytes(model, slot, layer)
        for slot in model.plan.present
        for layer in slot.layers(n_layers)
    )


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
        checksum = residency.window_checksum(flat[0] if len(flat) == 1 else np.concatenate(flat))
        if checksum is not None:
            self.checksums[name] = checksum
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

    def experts(self, name: str, rec: TensorRecord) -> ExpertStack:
        """One expert stack, its raw bytes as the file has them (decoded in the MoE kernels)."""
        n_experts, rows, cols = rec.shape
        return ExpertStack(self.put(name, [rec.raw], rec.nbytes), rec.qtype, n_experts, rows, cols)


def check_model(model: GGUFModel, max_context: int, max_chunk: int) -> None:
    """ModelLoadError for what the CUDA engine cannot run, found from the file alone (no GPU):
    the family's block, sizes, rope, the head size (attention kernels) and every matrix
    (`check_matrices`)."""
    if max_context < 1 or max_chunk < 1:
        raise ModelLoadError(f"max_context and max_chunk must be positive: {max_context}")
    c = model.config
    block = model.family.block
    if block not in BLOCKS:  # another block's kernels on its weights: plausible wrong tokens
        raise ModelLoadError(
            f"{model.path}: the cuda backend does not run the {block} block ({c.arch}) yet "
            f"(it runs {', '.join(BLOCKS)}); serve it with --backend cpu"
        )
    if c.rope_style not in ("norm", "neox") or c.rope_dim % 2 or c.rope_dim > c.head_dim:
        raise ModelLoadError(f"{model.path}: rope {c.rope_style}/{c.rope_dim} unsupported")
    if not head_dim_supported(c.head_dim):
        raise ModelLoadError(
            f"{model.path}: head_dim {c.head_dim} unsupported by the attention kernels "
            "(a multiple of 32, at most 256)"
        )
    check_matrices(model, QuantKernels.matrix_problem)
    if c.moe is not None:
        check_experts(model)


def check_experts(model: GGUFModel) -> None:
    """ModelLoadError for a mixture of experts the MoE kernels cannot run (cuda/moe_ops.py):
    too many experts or chosen experts, gate and up stacks of different types."""
    from cuda.moe_ops import MAX_EXPERTS, MAX_TOP_K

    m = model.config.moe
    if m.n_experts > MAX_EXPERTS or m.top_k > MAX_TOP_K:
        raise ModelLoadError(
            f"{model.path}: {m.n_experts} experts, top-{m.top_k}: the MoE kernels take at most "
            f"{MAX_EXPERTS} experts and top-{MAX_TOP_K}"
        )
    for i in range(model.config.n_layers):
        gate, up = (model.tensors[f"blk.{i}.ffn_{p}_exps.weight"] for p in ("gate", "up"))
        if gate.qtype != up.qtype:
            raise ModelLoadError(
                f"{model.path}: {gate.name} is {gate.qtype.name} but {up.name} is "
                f"{up.qtype.name} (one MoE launch decodes both: they must share a type)"
            )


def check_matrices(model: GGUFModel, problem: Callable[[Q, int], str | None]) -> None:
    """ModelLoadError naming the first matrix the kernels cannot take (type or shape).

    `problem(qtype, cols)` is QuantKernels.matrix_problem: checked here, before any upload, so a
    bad file fails at load rather than at a kernel's first use in some later job.
    """
    for rec in model.tensors.values():
        if len(rec.shape) in (2, 3):  # a matrix, or a stack of expert matrices
            why = problem(rec.qtype, int(rec.shape[-1]))
            if why is not None:
                raise ModelLoadError(f"{model.path}: tensor {rec.name} {rec.shape}: {why}")


def upload_weights(
    drv: Any, model: GGUFModel, ledger: Ledger, reporter: ProgressReporter, problem
) -> tuple[ModelWeights, dict[str, int]]:
    """Upload every slot of the plan (after `check_matrices(model, problem)`); returns the
    layout and the checksum of each allocation's window."""
    check_matrices(model, problem)
    up = _Uploader(drv, ledger, reporter)

    def put(slot: Slot, layer: int | None) -> Any:
        recs, name = model.slot_records(slot, layer), slot.alloc_name(layer)
        if slot.kind == "vector":
            return up.vector(name, recs)
        if slot.kind == "experts":
            return up.experts(name, recs[0])
        segs = up.matrices(name, recs)
        return segs if slot.name in GROUPS else segs[0]

    g = {slot.name: put(slot, None) for slot in model.plan.global_slots}
    output = g.get("output", g["token_embd"])  # the token_embd segment when the head is tied
    layers = tuple(
        LayerWeights(**{slot.name: put(slot, i) for slot in model.plan.layer_slots})
        for i in range(model.config.n_layers)
    )
    return ModelWeights(g["token_embd"], g["output_norm"], output, layers), up.checksums
