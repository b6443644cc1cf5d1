"""The numpy engine against plain per-element loops, on tiny random GGUF files and the real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGUFWriter

from runtime import numpy_layers as nl
from runtime.backends import cuda_available, load_engine, pick_backend
from runtime.default_model import default_model_path
from runtime.errors import InvalidRequest, ModelLoadError, WorkerError
from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine

# -- independent per-element references ----------------------------------------------------------


def ref_rms_norm(x, w, eps):
    out = np.empty_like(x, dtype=np.float64)
    for t in range(x.shape[0]):
        ms = sum(float(v) ** 2 for v in x[t]) / x.shape[1]
        for j in range(x.shape[1]):
            out[t, j] = x[t, j] / math.sqrt(ms + eps) * w[j]
    return out


def ref_rope(x, positions, rope_dim, base, style):
    """x (T, heads, D) float64 copy rotated pair by pair."""
    out = np.array(x, dtype=np.float64)
    half = rope_dim // 2
    for t, pos in enumerate(positions):
        for h in range(x.shape[1]):
            for i in range(half):
                theta = pos * base ** (-2.0 * i / rope_dim)
                a, b = (2 * i, 2 * i + 1) if style == "norm" else (i, i + half)
                xa, xb = float(x[t, h, a]), float(x[t, h, b])
                out[t, h, a] = xa * math.cos(theta) - xb * math.sin(theta)
                out[t, h, b] = xa * math.sin(theta) + xb * math.cos(theta)
    return out


def ref_attention(q, k, v, positions):
    """q (T, H, D) at `positions`; k, v (n, KV, D) for positions 0..n-1; causal, GQA."""
    t_new, n_heads, d = q.shape
    group = n_heads // k.shape[1]
    out = np.zeros((t_new, n_heads, d))
    for t, pos in enumerate(positions):
        for h in range(n_heads):
            kv = h // group
            scores = [float(q[t, h] @ k[s, kv]) / math.sqrt(d) for s in range(pos + 1)]
            m = max(scores)
            e = [math.exp(s - m) for s in scores]
            for s in range(pos + 1):
                out[t, h] += e[s] / sum(e) * v[s, kv]
    return out.reshape(t_new, n_heads * d)


def test_rms_norm_matches_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    w = rng.normal(size=10).astype(np.float32)
    np.testing.assert_allclose(nl.rms_norm(x, w, 1e-5), ref_rms_norm(x, w, 1e-5), rtol=1e-5)


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize("rope_dim", [8, 6])
def test_rope_matches_loop(style, rope_dim):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 8)).astype(np.float32)
    positions = [5, 6, 7, 300]
    cos, sin = nl.rope_tables(400, rope_dim, 10000.0)
    got = x.copy()
    nl.apply_rope(got, cos[positions], sin[positions], style)
    np.testing.assert_allclose(got, ref_rope(x, positions, rope_dim, 10000.0, style), atol=1e-5)


def test_attention_matches_loop_with_gqa_and_cache_offset():
    rng = np.random.default_rng(2)
    n_heads, n_kv, d, start, t_new = 6, 2, 4, 5, 3
    k = rng.normal(size=(start + t_new, n_kv, d)).astype(np.float32)
    v = rng.normal(size=(start + t_new, n_kv, d)).astype(np.float32)
    q = rng.normal(size=(t_new, n_heads, d)).astype(np.float32)
    cache_k = np.zeros((n_kv, 16, d), np.float32)  # (KV, max_context, D), unused tail left zero
    cache_v = np.zeros_like(cache_k)
    cache_k[:, : start + t_new] = k.transpose(1, 0, 2)
    cache_v[:, : start + t_new] = v.transpose(1, 0, 2)
    got = nl.attention(q, cache_k, cache_v, start, 1 / math.sqrt(d))
    want = ref_attention(q, k, v, range(start, start + t_new))
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- tiny random models written as GGUF files ---------------------------------------------------

TINY = dict(d=16, heads=4, kv=2, ff=24, vocab=40, layers=2, ctx=64, base=10000.0, eps=1e-5)


def write_tiny(path, arch, rope_dim, seed):
    rng = np.random.default_rng(seed)
    d, hd = TINY["d"], TINY["d"] // TINY["heads"]
    w = GGUFWriter(str(path), arch)
    for key, val in {
        "block_count": TINY["layers"],
        "context_length": TINY["ctx"],
        "embedding_length": d,
        "feed_forward_length": TINY["ff"],
        "attention.head_count": TINY["heads"],
        "attention.head_count_kv": TINY["kv"],
        "rope.dimension_count": rope_dim,
        "vocab_size": TINY["vocab"],
    }.items():
        w.add_uint32(f"{arch}.{key}", val)
    w.add_float32(f"{arch}.rope.freq_base", TINY["base"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", TINY["eps"])
    tensors = {"token_embd.weight": (TINY["vocab"], d), "output_norm.weight": (d,)}
    for i in range(TINY["layers"]):
        p = f"blk.{i}."
        tensors |= {p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,)}
        tensors |= {p + "attn_q.weight": (d, d), p + "attn_output.weight": (d, d)}
        tensors |= {
            p + "attn_k.weight": (TINY["kv"] * hd, d),
            p + "attn_v.weight": (TINY["kv"] * hd, d),
        }
        tensors |= {p + "ffn_gate.weight": (TINY["ff"], d), p + "ffn_up.weight": (TINY["ff"], d)}
        tensors |= {p + "ffn_down.weight": (d, TINY["ff"])}
        if arch == "qwen2":
            tensors |= {p + "attn_q.bias": (d,), p + "attn_k.bias": (TINY["kv"] * hd,)}
            tensors |= {p + "attn_v.bias": (TINY["kv"] * hd,)}
    arrays = {}
    for name, shape in tensors.items():
        base = 1.0 if "norm" in name else 0.0
        arrays[name] = (base + rng.normal(0, 0.4, shape)).astype(np.float32)
        w.add_tensor(name, arrays[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def ref_forward(a, ids, rope_dim, style, bias):
    """All-position logits of the tiny model: float64, no cache, weights as stored (out, in)."""
    ids = list(ids)
    hd = TINY["d"] // TINY["heads"]
    x = a["token_embd.weight"][ids].astype(np.float64)
    pos = range(len(ids))
    for i in range(TINY["layers"]):
        p = f"blk.{i}."

        def proj(h, name, p=p):
            y = h @ a[p + name + ".weight"].T
            return y + a[p + name + ".bias"] if bias else y

        h = ref_rms_norm(x, a[p + "attn_norm.weight"], TINY["eps"])
        q = ref_rope(
            proj(h, "attn_q").reshape(len(ids), -1, hd), pos, rope_dim, TINY["base"], style
        )
        k = ref_rope(
            proj(h, "attn_k").reshape(len(ids), -1, hd), pos, rope_dim, TINY["base"], style
        )
        v = proj(h, "attn_v").reshape(len(ids), -1, hd)
        x = x + ref_attention(q, k, v, pos) @ a[p + "attn_output.weight"].T
        h = ref_rms_norm(x, a[p + "ffn_norm.weight"], TINY["eps"])
        g, u = h @ a[p + "ffn_gate.weight"].T, h @ a[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ a[p + "ffn_down.weight"].T
    return ref_rms_norm(x, a["output_norm.weight"], TINY["eps"]) @ a["token_embd.weight"].T


@pytest.mark.parametrize(
    ("arch", "rope_dim", "style", "bias"),
    [("llama", 4, "norm", False), ("llama", 2, "norm", False), ("qwen2", 4, "neox", True)],
)
def test_tiny_model_matches_independent_forward(tmp_path, arch, rope_dim, style, bias):
    arrays = write_tiny(tmp_path / "tiny.gguf", arch, rope_dim, seed=3)
    ids = [3, 17, 0, 39, 5, 5, 12, 8, 30]
    want = ref_forward(arrays, ids, rope_dim, style, bias)  # (T, vocab)
    with open_gguf(tmp_path / "tiny.gguf") as model:
        assert model.config.rope_style == style and model.config.qkv_bias == bias
        eng = NumpyEngine.load(model, max_context=32)
    np.testing.assert_allclose(eng.prefill_all_logits(0, ids), want, atol=2e-4, rtol=1e-4)
    # the same sequence fed as chunks and single steps
    eng.release(0)
    eng.prefill(0, ids[:4])
    np.testing.assert_allclose(eng.logits(0), want[3], atol=2e-4, rtol=1e-4)
    # a second chunk at an offset (what chunked prefill does), then single steps
    np.testing.assert_allclose(eng.prefill_all_logits(0, ids[4:7]), want[4:7], atol=2e-4, rtol=1e-4)
    for t in range(7, len(ids)):
        eng.decode([0], [ids[t]])
        np.testing.assert_allclose(eng.logits(0), want[t], atol=2e-4, rtol=1e-4)
    assert eng.position(0) == len(ids)


def test_context_and_token_range_are_enforced(tmp_path):
    write_tiny(tmp_path / "tiny.gguf", "llama", 4, seed=4)
    with open_gguf(tmp_path / "tiny.gguf") as model:
        eng = NumpyEngine.load(model, max_context=8)
    eng.prefill(0, [1] * 8)
    with pytest.raises(InvalidRequest):
        eng.decode([0], [1])
    eng.release(0)
    with pytest.raises(InvalidRequest):
        eng.prefill(0, [TINY["vocab"]])
    with pytest.raises(ModelLoadError):
        load_engine(tmp_path / "tiny.gguf", "cpu", max_context=TINY["ctx"] + 1)


# -- the real model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    progress = []
    with open_gguf(default_model_path()) as model:
        total = model.total_tensor_bytes
        eng = NumpyEngine.load(
            model, max_context=256, progress=lambda d, t: progress.append((d, t))
        )
    yield eng, progress, total
    eng.close()


def test_load_reports_byte_progress(real):
    _, progress, total = real
    done = [d for d, _ in progress]
    assert done[0] == 0 and done == sorted(done) and len(done) > 30
    assert done.count(progress[-1][1]) == 1 and done[-1] == progress[-1][1]
    assert progress[-1][1] == total  # every tensor of this file is used by the engine


def test_prefill_then_decode_equals_one_batched_pass(real):
    eng, _, _ = real
    ids = [504, 3575, 282, 4649, 314, 7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155]
    eng.release(0)
    batched = eng.prefill_all_logits(0, ids)  # (15, vocab)
    eng.release(0)
    eng.prefill(0, ids[:10])
    np.testing.assert_allclose(eng.logits(0), batched[9], atol=2e-3, rtol=1e-4)
    for t in range(10, 15):
        eng.decode([0], [ids[t]])
        np.testing.assert_allclose(eng.logits(0), batched[t], atol=2e-3, rtol=1e-4)
    assert int(np.argmax(batched[4])) == 7042  # " Paris", llama.cpp's choice after the prompt


def test_residency_detects_a_changed_weight_and_a_closed_engine(tmp_path):
    write_tiny(tmp_path / "tiny.gguf", "llama", 4, seed=5)
    eng = load_engine(tmp_path / "tiny.gguf", "cpu", max_context=16)
    report = eng.check_residency()
    assert report.ok and report.checked_bytes > 0
    assert eng.memory_bytes() > sum(a.nbytes for a in eng.w.values())
    w = eng.w["down"]
    w.flags.writeable = True
    w.reshape(-1)[0] += 1.0  # element 0 is always in the sample
    report = eng.check_residency()
    assert not report.ok and "down" in report.detail
    eng.close()
    eng.close()
    assert not eng.check_residency().ok and eng.memory_bytes() == 0


def test_backend_choice():
    assert pick_backend("cpu") == "cpu"
    assert pick_backend("auto") == ("cuda" if cuda_available() else "cpu")
    with pytest.raises(InvalidRequest):
        pick_backend("tpu")


@pytest.mark.skipif(cuda_available(), reason="checks the error on machines without CUDA")
def test_cuda_backend_without_cuda_is_a_clear_error(tmp_path):
    write_tiny(tmp_path / "tiny.gguf", "llama", 4, seed=6)
    with pytest.raises(WorkerError) as info:
        load_engine(tmp_path / "tiny.gguf", "cuda", max_context=16)
    assert "cuda" in info.value.message.lower()
