"""Per-architecture differences, kept in one small table so the engines never branch on names.

An `Architecture` says which GGUF tensor holds each *role* (the engines ask for roles, never for
tensor names), which metadata keys are required, and the few switches that change the forward
pass: QKV bias, fused QKV, fused gate/up, rotary style and norm style. Adding `qwen2` or `phi3`
support to the engines is then a matter of honouring these switches, not of parsing names.

Shapes below are numpy order, as `runtime.gguf_file` reports them: a matrix is
(out_features, in_features), the reverse of the dimension list stored in the GGUF file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from runtime.errors import ModelLoadError
from runtime.model_config import ModelConfig

#: Tensors that exist once per model; name is fixed.
GLOBAL_ROLES = ("token_embd", "output_norm", "output")

#: Every role an architecture may map; per-layer roles take `{i}` in their tensor name.
LAYER_ROLES = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_q_bias",
    "attn_k_bias",
    "attn_v_bias",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "ffn_gate_up",
)

_GLOBAL_NAMES = {
    "token_embd": "token_embd.weight",
    "output_norm": "output_norm.weight",
    "output": "output.weight",
}

_SEPARATE_QKV = {
    "attn_q": "blk.{i}.attn_q.weight",
    "attn_k": "blk.{i}.attn_k.weight",
    "attn_v": "blk.{i}.attn_v.weight",
}
_QKV_BIAS = {
    "attn_q_bias": "blk.{i}.attn_q.bias",
    "attn_k_bias": "blk.{i}.attn_k.bias",
    "attn_v_bias": "blk.{i}.attn_v.bias",
}
_COMMON_LAYER = {
    "attn_norm": "blk.{i}.attn_norm.weight",
    "attn_output": "blk.{i}.attn_output.weight",
    "ffn_norm": "blk.{i}.ffn_norm.weight",
    "ffn_down": "blk.{i}.ffn_down.weight",
}
_SEPARATE_GATE_UP = {
    "ffn_gate": "blk.{i}.ffn_gate.weight",
    "ffn_up": "blk.{i}.ffn_up.weight",
}

ShapeFn = Callable[[ModelConfig], tuple[int, ...]]


@attrs.frozen
class Architecture:
    name: str
    layer_tensors: Mapping[str, str]  # role -> name pattern with {i}
    qkv_bias: bool
    fused_qkv: bool  # one attn_qkv matrix, rows ordered q, k, v
    fused_gate_up: bool  # one matrix holding gate rows then up rows (role ffn_gate_up)
    rope_style: str  # "norm" (adjacent pairs, GGML mode 0) | "neox" (halves)
    norm: str  # "rms"
    #: role -> expected numpy-order shape, given the config; follows from the switches above
    shapes: Mapping[str, ShapeFn] = attrs.field(init=False)

    @shapes.default
    def _shapes_from_switches(self) -> Mapping[str, ShapeFn]:
        return _shapes(
            fused_qkv=self.fused_qkv, fused_gate_up=self.fused_gate_up, qkv_bias=self.qkv_bias
        )

    def tensor_name(self, role: str, layer: int | None = None) -> str:
        """The GGUF tensor name of `role` (in `layer` for per-layer roles); KeyError if unmapped."""
        if role in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[role]
        if layer is None:
            raise KeyError(f"role {role!r} is per-layer: give a layer index")
        return self.layer_tensors[role].format(i=layer)

    def required_keys(self) -> tuple[str, ...]:
        a = self.name
        return (
            f"{a}.block_count",
            f"{a}.embedding_length",
            f"{a}.feed_forward_length",
            f"{a}.attention.head_count",
            f"{a}.attention.layer_norm_rms_epsilon",
        )

    def config_from_metadata(self, md: Mapping[str, Any], tensor_names: set[str]) -> ModelConfig:
        """Build the ModelConfig; raises ModelLoadError (key named) on a missing or bad value."""
        a = self.name

        def get(key: str, kind: type, default: Any = None) -> Any:
            if key not in md:
                if default is None:
                    raise ModelLoadError(f"required metadata key {key!r} is missing")
                return default
            value = md[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or (kind is int and (value != int(value) or value <= 0)):
                raise ModelLoadError(
                    f"metadata key {key!r} must be a positive {kind.__name__}, got {value!r}"
                )
            return kind(value)

        d_model = get(f"{a}.embedding_length", int)
        n_heads = get(f"{a}.attention.head_count", int)
        n_kv = get(f"{a}.attention.head_count_kv", int, n_heads)
        if d_model % n_heads:
            raise ModelLoadError(
                f"{a}.embedding_length {d_model} is not a multiple of "
                f"{a}.attention.head_count {n_heads}"
            )
        if n_heads % n_kv:
            raise ModelLoadError(
                f"{a}.attention.head_count {n_heads} is not a multiple of "
                f"{a}.attention.head_count_kv {n_kv}"
            )
        head_dim = d_model // n_heads
        vocab = md.get(f"{a}.vocab_size")
        if vocab is None:
            tokens = md.get("tokenizer.ggml.tokens")
            if not isinstance(tokens, list) or not tokens:
                raise ModelLoadError(
                    f"neither {a}.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size"
                )
            vocab = len(tokens)
        vocab = get(f"{a}.vocab_size", int, vocab)
        return ModelConfig(
            arch=a,
            n_layers=get(f"{a}.block_count", int),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            d_ff=get(f"{a}.feed_forward_length", int),
            vocab_size=vocab,
            context_length=get(f"{a}.context_length", int, 2048),
            rope_base=get(f"{a}.rope.freq_base", float, 10000.0),
            rope_dim=get(f"{a}.rope.dimension_count", int, head_dim),
            rope_style=self.rope_style,
            norm_eps=get(f"{a}.attention.layer_norm_rms_epsilon", float),
            # llama.cpp reuses token_embd as the output head when output.weight is absent
            tied_output="output.weight" not in tensor_names,
            qkv_bias=self.qkv_bias,
        )


def _shapes(*, fused_qkv: bool, fused_gate_up: bool, qkv_bias: bool) -> dict[str, ShapeFn]:
    s: dict[str, ShapeFn] = {
        "token_embd": lambda c: (c.vocab_size, c.d_model),
        "output": lambda c: (c.vocab_size, c.d_model),
        "output_norm": lambda c: (c.d_model,),
        "attn_norm": lambda c: (c.d_model,),
        "ffn_norm": lambda c: (c.d_model,),
        "attn_output": lambda c: (c.d_model, c.n_heads * c.head_dim),
        "ffn_down": lambda c: (c.d_model, c.d_ff),
    }
    if fused_qkv:
        s["attn_qkv"] = lambda c: (c.n_heads * c.head_dim + 2 * c.kv_dim, c.d_model)
    else:
        s["attn_q"] = lambda c: (c.n_heads * c.head_dim, c.d_model)
        s["attn_k"] = lambda c: (c.kv_dim, c.d_model)
        s["attn_v"] = lambda c: (c.kv_dim, c.d_model)
    if qkv_bias:
        s["attn_q_bias"] = lambda c: (c.n_heads * c.head_dim,)
        s["attn_k_bias"] = lambda c: (c.kv_dim,)
        s["attn_v_bias"] = lambda c: (c.kv_dim,)
    if fused_gate_up:
        s["ffn_gate_up"] = lambda c: (2 * c.d_ff, c.d_model)
    else:
        s["ffn_gate"] = lambda c: (c.d_ff, c.d_model)
        s["ffn_up"] = lambda c: (c.d_ff, c.d_model)
    return s


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        name="llama",
        layer_tensors={**_COMMON_LAYER, **_SEPARATE_QKV, **_SEPARATE_GATE_UP},
        qkv_bias=False,
        fused_qkv=False,
        fused_gate_up=False,
        rope_style="norm",
        norm="rms",
    ),
    "qwen2": Architecture(
        name="qwen2",
        layer_tensors={**_COMMON_LAYER, **_SEPARATE_QKV, **_QKV_BIAS, **_SEPARATE_GATE_UP},
        qkv_bias=True,
        fused_qkv=False,
        fused_gate_up=False,
        rope_style="neox",
        norm="rms",
    ),
    "phi3": Architecture(
        name="phi3",
        # phi3 GGUFs store the fused gate+up matrix under the name ffn_up (2*d_ff rows)
        layer_tensors={
            **_COMMON_LAYER,
            "attn_qkv": "blk.{i}.attn_qkv.weight",
            "ffn_gate_up": "blk.{i}.ffn_up.weight",
        },
        qkv_bias=False,
        fused_qkv=True,
        fused_gate_up=True,
        rope_style="neox",
        norm="rms",
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelLoadError(
            f"architecture {name!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        ) from None
