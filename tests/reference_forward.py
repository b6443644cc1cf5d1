"""Plain-numpy forward passes of Phi-3 and GPT-OSS, read straight from a GGUF (test helper).

Written from transformers' `modeling_phi3.py` / `modeling_gpt_oss.py` (5.17) and apart from the
engine: tensors come from gguf-py's reader and `gguf.quants.dequantize`, nothing from `runtime/`.
Everything is computed in float64, so the result is the model's exact math and the only error in
a comparison with transformers' fp32 logits is theirs. The switches on `gpt_oss_forward` exist to
show that each feature of the fixture matters (turning one off must move the logits) and to
model llama.cpp's one difference (YaRN's rounded correction range).

Layouts, as llama.cpp's converter writes them: linear weights are (out, in) rows; Phi-3's
`attn_qkv` rows are q, then k, then v and `ffn_up` rows are gate then up; GPT-OSS experts are
(expert, out, in) with gate and up split apart. Both families rotate NeoX-style (halves).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0  # GptOssExperts.alpha / .limit


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata without the token lists, every tensor as float64 in numpy order)."""
    reader = GGUFReader(path)
    meta = {
        k: f.contents()
        for k, f in reader.fields.items()
        if not k.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.s"))
        and k != "tokenizer.ggml.token_type"
    }
    tensors = {
        t.name: gguf_quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        for t in reader.tensors
    }
    return meta, tensors


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_neox(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (T, heads, d), cos/sin (T, d/2): rotate pairs (i, i + d/2)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def default_inv_freq(dim: int, theta: float) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_inv_freq(dim, theta, factor, orig_ctx, beta_fast, beta_slow, truncate):
    """transformers' `_compute_yarn_parameters`: (inv_freq (dim/2,), attention factor)."""

    def corr_dim(rotations):
        return dim * math.log(orig_ctx / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:  # what llama.cpp always does (ggml_rope_yarn_corr_dims)
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = default_inv_freq(dim, theta)
    interpolation = extrapolation / factor
    keep = 1 - ramp  # share of the unscaled frequency
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq, 0.1 * math.log(factor) + 1.0


def attention(q, k, v, *, window: int | None, sinks: np.ndarray | None) -> np.ndarray:
    """q (T, H, d), k/v (T, KV, d) -> (T, H*d). Causal; `window` keeps the last `window` keys
    (i - j < window); a sink adds one logit per head to the softmax and no value."""
    t, n_head, d = q.shape
    group = n_head // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head h uses kv h // group
    scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    masked = j > i
    if window is not None:
        masked |= i - j >= window
    scores = np.where(masked[None], -np.inf, scores)
    if sinks is not None:
        sink_col = np.broadcast_to(sinks[:, None, None], (n_head, t, 1))
        scores = np.concatenate([scores, sink_col], axis=-1)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", p[..., :t], v)
    return out.reshape(t, n_head * d)


def phi3_forward(meta: dict, w: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of Phi3ForCausalLM."""
    n_head, n_kv = meta["phi3.attention.head_count"], meta["phi3.attention.head_count_kv"]
    eps = meta["phi3.attention.layer_norm_rms_epsilon"]
    window = meta.get("phi3.attention.sliding_window") or None  # transformers applies it
    x = w["token_embd.weight"][ids]
    d = x.shape[1] // n_head
    pos = np.arange(len(ids), dtype=np.float64)
    ang = pos[:, None] * default_inv_freq(
        meta["phi3.rope.dimension_count"], meta["phi3.rope.freq_base"]
    )
    cos, sin = np.cos(ang), np.sin(ang)
    for il in range(meta["phi3.block_count"]):
        p = f"blk.{il}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        qkv = h @ w[p + "attn_qkv.weight"].T
        q, k, v = np.split(qkv, [n_head * d, (n_head + n_kv) * d], axis=1)
        q = rope_neox(q.reshape(-1, n_head, d), cos, sin)
        k = rope_neox(k.reshape(-1, n_kv, d), cos, sin)
        a = attention(q, k, v.reshape(-1, n_kv, d), window=window, sinks=None)
        x = x + a @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate, up = np.split(h @ w[p + "ffn_up.weight"].T, 2, axis=1)
        x = x + (silu(gate) * up) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w["output.weight"].T


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def q8_0_round_trip(x: np.ndarray) -> np.ndarray:
    """x through ggml's Q8_0 (what ggml-cpu does to activations before an MXFP4 dot product)."""
    q8 = GGMLQuantizationType.Q8_0
    raw = gguf_quants.quantize(x.astype(np.float32).reshape(1, -1), q8)
    return gguf_quants.dequantize(raw, q8).astype(np.float64).reshape(x.shape)


def moe(h, w, p, top_k: int, *, clamp=True, softmax_top_k=True, q8_inputs=False) -> np.ndarray:
    """GptOssMLP on h (T, D): router -> top-k -> softmax over the chosen logits -> experts.
    `q8_inputs` rounds the experts' inputs through Q8_0 (llama.cpp's CPU arithmetic)."""
    through = q8_0_round_trip if q8_inputs else (lambda v: v)
    logits = h @ w[p + "ffn_gate_inp.weight"].T + w[p + "ffn_gate_inp.bias"]  # (T, E)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        chosen = np.argsort(-logits[t], kind="stable")[:top_k]
        # transformers: softmax over the k chosen logits; the switch: over all, then pick k
        weights = softmax(logits[t, chosen]) if softmax_top_k else softmax(logits[t])[chosen]
        x = through(h[t])
        for e, weight in zip(chosen, weights, strict=True):
            gate = w[p + "ffn_gate_exps.weight"][e] @ x + w[p + "ffn_gate_exps.bias"][e]
            up = w[p + "ffn_up_exps.weight"][e] @ x + w[p + "ffn_up_exps.bias"][e]
            if clamp:
                gate = np.minimum(gate, SWIGLU_LIMIT)
                up = np.clip(up, -SWIGLU_LIMIT, SWIGLU_LIMIT)
            glu = gate / (1 + np.exp(-SWIGLU_ALPHA * gate))
            y = w[p + "ffn_down_exps.weight"][e] @ through((up + 1) * glu)
            y += w[p + "ffn_down_exps.bias"][e]
            out[t] += weight * y
    return out


def gpt_oss_forward(
    meta: dict,
    w: dict,
    ids: list[int],
    *,
    yarn_truncate: bool = False,
    sinks: bool = True,
    sliding_window: bool = True,
    clamp: bool = True,
    softmax_top_k: bool = True,
    q8_expert_inputs: bool = False,
) -> np.ndarray:
    """Logits (T, vocab) of GptOssForCausalLM. The defaults are transformers' model; each switch
    turns one feature off, or (`yarn_truncate`, `q8_expert_inputs`) does what llama.cpp does."""
    m = lambda key: meta["gpt-oss." + key]  # noqa: E731
    n_head, n_kv, d = (
        m("attention.head_count"),
        m("attention.head_count_kv"),
        m("attention.key_length"),
    )
    eps = m("attention.layer_norm_rms_epsilon")
    inv_freq, mscale = yarn_inv_freq(
        d,
        m("rope.freq_base"),
        m("rope.scaling.factor"),
        m("rope.scaling.original_context_length"),
        m("rope.scaling.yarn_beta_fast"),
        m("rope.scaling.yarn_beta_slow"),
        yarn_truncate,
    )
    ang = np.arange(len(ids), dtype=np.float64)[:, None] * inv_freq
    cos, sin = np.cos(ang) * mscale, np.sin(ang) * mscale
    x = w["token_embd.weight"][ids]
    for il in range(m("block_count")):
        p = f"blk.{il}."
        # layers 0, 2, ... use the sliding window (transformers' layer_types; llama.cpp's pattern)
        window = m("attention.sliding_window") if sliding_window and il % 2 == 0 else None
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = h @ w[p + "attn_q.weight"].T + w[p + "attn_q.bias"]
        k = h @ w[p + "attn_k.weight"].T + w[p + "attn_k.bias"]
        v = h @ w[p + "attn_v.weight"].T + w[p + "attn_v.bias"]
        q = rope_neox(q.reshape(-1, n_head, d), cos, sin)
        k = rope_neox(k.reshape(-1, n_kv, d), cos, sin)
        s = w[p + "attn_sinks.weight"] if sinks else None
        a = attention(q, k, v.reshape(-1, n_kv, d), window=window, sinks=s)
        x = x + a @ w[p + "attn_output.weight"].T + w[p + "attn_output.bias"]
        h = rms_norm(x, w[p + "post_attention_norm.weight"], eps)
        x = x + moe(
            h,
            w,
            p,
            m("expert_used_count"),
            clamp=clamp,
            softmax_top_k=softmax_top_k,
            q8_inputs=q8_expert_inputs,
        )
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w["output.weight"].T
