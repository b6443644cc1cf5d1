"""The transformer building blocks in fp32 numpy: RMSNorm, rotary embedding, causal GQA attention
(optionally windowed, optionally with gpt-oss's attention sinks), gated FFN (SiLU or GELU-tanh).

Pure functions on arrays; each family's block (`runtime.models.<block>`) strings them together.
Kept apart so tests can check each one against a plain per-element loop. Shapes: T = tokens in
this pass, H = query heads, KV = key/value heads, D = head_dim, P = positions already in the cache.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.model_config import YarnScaling

#: A product gets at least this many outputs (rows of w times columns): below about 1,200
#: outputs OpenBLAS takes another code path (measured: 0.3.31, Haswell kernels), which sums in
#: another order. Padding the columns up to it keeps every product on one path.
MIN_OUTPUTS = 4096


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (T, in) times w (out, in) transposed -> (T, out), each row the same whatever T is.

    Batch invariance (specs/decisions/0026-batch-slots-step-loop.md): a row's result must not
    depend on the other rows. Computed as w @ x.T, one sgemm in which OpenBLAS reduces every
    output element in the same order for any number of columns and any column position, as long
    as it stays on its general path: at least 2 columns (one goes to sgemv, which sums in another
    order) and `MIN_OUTPUTS` outputs. Fewer rows are padded with zero columns, whose results are
    dropped. (w @ x.T is also 1.7-2x faster than x @ w.T for 2..16 rows: the big operand is read
    in its own layout.) tests/runtime/test_batch_invariance.py checks this on the BLAS in use.
    """
    t = x.shape[0]
    cols = max(2, -(-MIN_OUTPUTS // w.shape[0]))
    if t >= cols:
        return np.ascontiguousarray((w @ x.T).T)
    padded = np.zeros((cols, x.shape[1]), np.float32)  # (cols, in)
    padded[:t] = x
    return np.ascontiguousarray((w @ padded.T)[:, :t].T)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (..., d) -> x / sqrt(mean(x**2) + eps) * weight over the last axis, in fp32.

    (T, d_model) rows for the layer norms; (T, heads, head_dim) for gemma3's per-head q/k norm."""
    ms = np.einsum("...d,...d->...", x, x, dtype=np.float32)[..., None]  # (..., 1)
    ms /= np.float32(x.shape[-1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * weight


def rope_tables(
    max_context: int, rope_dim: int, base: float, yarn: YarnScaling | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of pos * inv_freq: two (max_context, rope_dim // 2) fp32 tables, inv_freq_i =
    base**(-2i / rope_dim), YaRN-blended and both tables scaled by its attention factor when
    `yarn` is given.

    Computed in float64 and rounded once, so long positions keep their accuracy.
    """
    inv_freq = base ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)  # (rope_dim/2,)
    scale = 1.0
    if yarn is not None:
        inv_freq = _yarn_blend(inv_freq, rope_dim, base, yarn)
        scale = yarn.attention_factor
    angles = np.arange(max_context, dtype=np.float64)[:, None] * inv_freq[None, :]
    return (np.cos(angles) * scale).astype(np.float32), (np.sin(angles) * scale).astype(np.float32)


def _yarn_blend(inv_freq: np.ndarray, dim: int, base: float, yarn: YarnScaling) -> np.ndarray:
    """YaRN's frequencies: dimension i keeps its own frequency below the correction range
    (fast rotations: `beta_fast` turns over the original context), takes freq / factor above it
    (`beta_slow` turns), and a linear blend in between."""

    def correction_dim(turns: float) -> float:  # the dimension that turns `turns` times
        return dim * math.log(yarn.original_context / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0.0), min(high, dim - 1.0)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return inv_freq / yarn.factor * ramp + inv_freq * (1.0 - ramp)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> None:
    """Rotate x (T, heads, D) in place; cos, sin (T, rope_dim/2) are the rows of its positions.

    "norm" (GGUF llama, GGML rope mode 0) rotates adjacent pairs (x[2i], x[2i+1]); "neox" rotates
    (x[i], x[i + rope_dim/2]). Dimensions past rope_dim are left alone.
    """
    half = cos.shape[1]
    if style == "norm":
        pairs = x[..., : 2 * half].reshape(*x.shape[:2], half, 2)  # (T, heads, half, 2) view
        a, b = pairs[..., 0], pairs[..., 1]
    elif style == "neox":
        a, b = x[..., :half], x[..., half : 2 * half]  # (T, heads, half) views
    else:
        raise ValueError(f"unknown rope style {style!r}")
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, half)
    a_new = a * c - b * s
    b[...] = a * s + b * c
    a[...] = a_new


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    start: int,
    scale: float,
    window: int = 0,
    sinks: np.ndarray | None = None,
) -> np.ndarray:
    """Causal grouped-query attention of T new queries over the cache.

    q (T, H, D) for positions start .. start+T-1; k_cache, v_cache (KV, >= start+T, D) already hold
    those positions' keys/values. Query head h reads kv head h // (H // KV) (llama.cpp's grouping).
    window > 0: the key at position p is visible from the query at t iff 0 <= t - p < window
    (llama.cpp's standard sliding window); 0: every earlier key. `sinks` (H,) (gpt-oss): head
    h's softmax row gets one more logit sinks[h], which weighs no value (it only takes a share
    of the probability). Returns (T, H * D).
    """
    t_new, n_heads, d = q.shape
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    n = start + t_new
    lo = max(0, start - window + 1) if window else 0  # the oldest key any query here sees
    # (KV, group * T, D): the queries of one kv group stacked, head-major within the group
    qg = q.reshape(t_new, n_kv, group, d).transpose(1, 2, 0, 3).reshape(n_kv, group * t_new, d)
    scores = np.matmul(qg, k_cache[:, lo:n].transpose(0, 2, 1))  # (KV, group*T, n - lo)
    scores *= np.float32(scale)
    key_pos = np.arange(lo, n)[None, :]  # (1, n - lo)
    query_pos = (start + np.arange(t_new))[:, None]  # (T, 1)
    hidden = key_pos > query_pos  # (T, n - lo): the future
    if window:
        hidden |= query_pos - key_pos >= window
    if hidden.any():
        scores.reshape(n_kv, group, t_new, n - lo)[:, :, hidden] = -np.inf
    top = scores.max(axis=-1, keepdims=True)  # (KV, group*T, 1)
    if sinks is not None:  # rows are (kv, g, t): the sink of head kv * group + g
        sink = np.repeat(sinks.astype(np.float32).reshape(n_kv, group, 1), t_new, axis=1)
        sink = sink.reshape(n_kv, group * t_new, 1)
        top = np.maximum(top, sink)
    scores -= top
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if sinks is not None:
        total += np.exp(sink - top)
    scores /= total
    out = np.matmul(scores, v_cache[:, lo:n])  # (KV, group*T, D)
    return out.reshape(n_kv, group, t_new, d).transpose(2, 0, 1, 3).reshape(t_new, n_heads * d)


def silu(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflows to inf for x < -88; x / inf = -0 is then the right limit.
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (ggml_gelu's formula): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x**3)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


def glu(gate_up: np.ndarray, d_ff: int, act: str = "silu") -> np.ndarray:
    """gate_up (T, 2 * d_ff) = [gate | up] -> act(gate) * up, (T, d_ff). "silu" is SwiGLU."""
    gate, up = gate_up[:, :d_ff], gate_up[:, d_ff:]
    return ACTIVATIONS[act](gate) * up


def split_heads(
    qkv: np.ndarray, n_heads: int, n_kv: int, head_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qkv (T, q | k | v) -> q (T, H, D), k (T, KV, D), v (T, KV, D), views into qkv."""
    t, q_dim, kv_dim = qkv.shape[0], n_heads * head_dim, n_kv * head_dim
    q = qkv[:, :q_dim].reshape(t, n_heads, head_dim)
    k = qkv[:, q_dim : q_dim + kv_dim].reshape(t, n_kv, head_dim)
    v = qkv[:, q_dim + kv_dim :].reshape(t, n_kv, head_dim)
    return q, k, v


def swiglu(gate_up: np.ndarray, d_ff: int) -> np.ndarray:
    """gate_up (T, 2 * d_ff) = [gate | up] -> silu(gate) * up, (T, d_ff)."""
    return glu(gate_up, d_ff, "silu")
