"""The slots most families share, with llama.cpp's tensor names and numpy-order shapes.

Allocation names (`alloc`) are the CUDA engine's ledger entries; they keep the names the
engine used before the seam (q|k|v is one `blk.N.attn_qkv`, gate|up one `blk.N.ffn_gate_up`).
"""

from __future__ import annotations

from runtime.models.plan import Slot, matrix, vector


def token_embd() -> Slot:
    return matrix("token_embd", "token_embd", ("token_embd", "token_embd.weight", _vocab_rows))


def output_norm() -> Slot:
    return vector("output_norm", "output_norm", ("output_norm", "output_norm.weight", _d_model))


def output() -> Slot:
    """Optional everywhere: without output.weight the head is token_embd (tied)."""
    return matrix("output", "output", ("output", "output.weight", _vocab_rows), required=False)


def attn_norm() -> Slot:
    return vector("attn_norm", "blk.{i}.attn_norm", _layer("attn_norm", "weight", _d_model))


def ffn_norm() -> Slot:
    return vector("ffn_norm", "blk.{i}.ffn_norm", _layer("ffn_norm", "weight", _d_model))


def qkv(*, fused: bool) -> Slot:
    """q | k | v rows: three tensors, or phi3's one attn_qkv holding them in that order."""
    if fused:
        return matrix("qkv", "blk.{i}.attn_qkv", _layer("attn_qkv", "weight", _qkv_rows))
    return matrix(
        "qkv",
        "blk.{i}.attn_qkv",
        _layer("attn_q", "weight", lambda c: (c.q_dim, c.d_model)),
        _layer("attn_k", "weight", lambda c: (c.kv_dim, c.d_model)),
        _layer("attn_v", "weight", lambda c: (c.kv_dim, c.d_model)),
    )


def qkv_bias(*, required: bool) -> Slot:
    return vector(
        "qkv_bias",
        "blk.{i}.attn_qkv_bias",
        _layer("attn_q", "bias", lambda c: (c.q_dim,)),
        _layer("attn_k", "bias", lambda c: (c.kv_dim,)),
        _layer("attn_v", "bias", lambda c: (c.kv_dim,)),
        required=required,
    )


def attn_output() -> Slot:
    return matrix(
        "attn_output",
        "blk.{i}.attn_output",
        _layer("attn_output", "weight", lambda c: (c.d_model, c.q_dim)),
    )


def gate_up(*, fused: bool) -> Slot:
    """gate | up rows: two tensors, or phi3's one matrix stored under the name ffn_up."""
    if fused:
        return matrix(
            "gate_up",
            "blk.{i}.ffn_gate_up",
            ("ffn_gate_up", "blk.{i}.ffn_up.weight", lambda c: (2 * c.d_ff, c.d_model)),
        )
    return matrix(
        "gate_up",
        "blk.{i}.ffn_gate_up",
        _layer("ffn_gate", "weight", lambda c: (c.d_ff, c.d_model)),
        _layer("ffn_up", "weight", lambda c: (c.d_ff, c.d_model)),
    )


def down() -> Slot:
    return matrix(
        "down", "blk.{i}.ffn_down", _layer("ffn_down", "weight", lambda c: (c.d_model, c.d_ff))
    )


def layer_vector(name: str, tensor: str, shape) -> Slot:
    """A per-layer norm weight `blk.{i}.<tensor>.weight` (gemma3's q/k and post norms)."""
    return vector(name, f"blk.{{i}}.{tensor}", _layer(tensor, "weight", shape))


def _layer(tensor: str, kind: str, shape):
    role = tensor if kind == "weight" else f"{tensor}_bias"
    return (role, f"blk.{{i}}.{tensor}.{kind}", shape)


def _vocab_rows(c):
    return (c.vocab_size, c.d_model)


def _d_model(c):
    return (c.d_model,)


def _qkv_rows(c):
    return (c.q_dim + 2 * c.kv_dim, c.d_model)
