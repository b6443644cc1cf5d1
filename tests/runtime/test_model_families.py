"""The model-family seam: plans, config keys, and the gemma3 block against an independent forward.

The tiny gemma3 file has head_dim 16 (from key_length) unlike d_model / n_heads (8), seven
layers (so both kinds: layers 0-4 and 6 slide, layer 5 attends to everything) and a 3-token
window, shorter than the sequence, so the window, both rope bases, the q/k norms, the post
norms, the embedding scale and GELU all change the logits the reference must match.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf import quants as gguf_quants

from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf
from runtime.models import FAMILIES, get_family
from runtime.numpy_engine import NumpyEngine
from tests.reference_data import catalog_model_file

G = dict(d=32, heads=4, kv=2, hd=16, ff=48, vocab=48, layers=7, window=3, base=1e6, eps=1e-6)


def gemma_tensors(g=G) -> dict[str, tuple[int, ...]]:
    d, q, kv, hd, ff = g["d"], g["heads"] * g["hd"], g["kv"] * g["hd"], g["hd"], g["ff"]
    t = {"token_embd.weight": (g["vocab"], d), "output_norm.weight": (d,)}
    for i in range(g["layers"]):
        b = f"blk.{i}."
        t |= {
            b + "attn_norm.weight": (d,),
            b + "attn_q.weight": (q, d),
            b + "attn_k.weight": (kv, d),
            b + "attn_v.weight": (kv, d),
            b + "attn_q_norm.weight": (hd,),
            b + "attn_k_norm.weight": (hd,),
            b + "attn_output.weight": (d, q),
            b + "post_attention_norm.weight": (d,),
            b + "ffn_norm.weight": (d,),
            b + "ffn_gate.weight": (ff, d),
            b + "ffn_up.weight": (ff, d),
            b + "ffn_down.weight": (d, ff),
            b + "post_ffw_norm.weight": (d,),
        }
    return t


def write_gemma(path, *, drop=(), extra=None, retype=None, seed=0, g=G, meta=None):
    """Random weights of `g`'s shapes; `meta` (default `g`) is what the metadata says."""
    rng = np.random.default_rng(seed)
    m = meta or g
    w = GGUFWriter(str(path), "gemma3")
    for key, val in {
        "block_count": m["layers"],
        "context_length": 64,
        "embedding_length": m["d"],
        "feed_forward_length": m["ff"],
        "attention.head_count": m["heads"],
        "attention.head_count_kv": m["kv"],
        "attention.key_length": m["hd"],
        "attention.value_length": m["hd"],
        "attention.sliding_window": m["window"],
    }.items():
        w.add_uint32(f"gemma3.{key}", val)
    w.add_float32("gemma3.rope.freq_base", m["base"])
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", m["eps"])
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(m["vocab"])])
    arrays = {}
    for name, shape in {**gemma_tensors(g), **(extra or {})}.items():
        if name in drop:
            continue
        base = 1.0 if "norm" in name else 0.0
        a = (base + rng.normal(0, 0.5, shape)).astype(np.float32)
        if name == "token_embd.weight":
            a *= 0.2  # the embedding is scaled by sqrt(d_model)
        arrays[name] = a
        qtype = (retype or {}).get(name)
        if qtype is None:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf_quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def ref_gemma(a, ids, g=G):
    """All-position logits in float64 with per-element loops, straight from the gemma3 graph."""
    T, H, KV, D = len(ids), g["heads"], g["kv"], g["hd"]

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + g["eps"]) * w

    def rope(x, pos, base):  # NEOX: rotate (x[i], x[i + D/2])
        out = x.copy()
        for i in range(D // 2):
            th = pos * base ** (-2.0 * i / D)
            out[i] = x[i] * math.cos(th) - x[i + D // 2] * math.sin(th)
            out[i + D // 2] = x[i] * math.sin(th) + x[i + D // 2] * math.cos(th)
        return out

    x = a["token_embd.weight"][ids].astype(np.float64) * math.sqrt(g["d"])
    for layer in range(g["layers"]):
        p = f"blk.{layer}."
        sliding = layer % 6 < 5
        base = 10000.0 if sliding else g["base"]
        h = norm(x, a[p + "attn_norm.weight"])
        q = (h @ a[p + "attn_q.weight"].T).reshape(T, H, D)
        k = (h @ a[p + "attn_k.weight"].T).reshape(T, KV, D)
        v = (h @ a[p + "attn_v.weight"].T).reshape(T, KV, D)
        q, k = norm(q, a[p + "attn_q_norm.weight"]), norm(k, a[p + "attn_k_norm.weight"])
        q = np.array([[rope(q[t, hh], t, base) for hh in range(H)] for t in range(T)])
        k = np.array([[rope(k[t, hh], t, base) for hh in range(KV)] for t in range(T)])
        att = np.zeros((T, H, D))
        for t in range(T):
            for hh in range(H):
                kv = hh // (H // KV)
                keys = [s for s in range(t + 1) if not sliding or t - s < g["window"]]
                sc = [float(q[t, hh] @ k[s, kv]) / math.sqrt(D) for s in keys]
                e = np.exp(np.array(sc) - max(sc))
                for wgt, s in zip(e / e.sum(), keys, strict=True):
                    att[t, hh] += wgt * v[s, kv]
        o = att.reshape(T, H * D) @ a[p + "attn_output.weight"].T
        x = x + norm(o, a[p + "post_attention_norm.weight"])
        h = norm(x, a[p + "ffn_norm.weight"])
        gate, up = h @ a[p + "ffn_gate.weight"].T, h @ a[p + "ffn_up.weight"].T
        gelu = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        x = x + norm((gelu * up) @ a[p + "ffn_down.weight"].T, a[p + "post_ffw_norm.weight"])
    return norm(x, a["output_norm.weight"]) @ a["token_embd.weight"].T


def test_gemma3_config_from_its_keys(tmp_path):
    write_gemma(tmp_path / "g.gguf")
    with open_gguf(tmp_path / "g.gguf") as model:
        c = model.config
    assert (c.head_dim, c.q_dim, c.kv_dim, c.rope_dim, c.rope_style) == (16, 64, 32, 16, "neox")
    assert c.attn_scale == pytest.approx(1 / 4)
    assert c.embed_scale == pytest.approx(math.sqrt(32)) and c.tied_output and not c.qkv_bias
    assert c.layer_window == (3, 3, 3, 3, 3, 0, 3)
    assert c.layer_rope_base == (1e4, 1e4, 1e4, 1e4, 1e4, 1e6, 1e4) and c.rope_bases == (1e4, 1e6)
    assert (c.qk_norm, c.post_norms, c.ffn_act) == (True, True, "gelu_tanh")


def test_gemma3_block_matches_an_independent_forward(tmp_path):
    arrays = write_gemma(tmp_path / "g.gguf", seed=1)
    ids = [3, 17, 0, 39, 5, 5, 12, 8, 30, 47]
    want = ref_gemma(arrays, ids)  # (T, vocab)
    with open_gguf(tmp_path / "g.gguf") as model:
        eng = NumpyEngine.load(model, max_context=16)
    assert len(eng.rope) == 2  # one table per rope base, built at load
    np.testing.assert_allclose(eng.prefill_all_logits(0, ids), want, atol=2e-4, rtol=1e-4)
    eng.release(0)  # chunks and single steps see the same windows
    eng.prefill(0, ids[:4])
    np.testing.assert_allclose(eng.prefill_all_logits(0, ids[4:7]), want[4:7], atol=2e-4, rtol=1e-4)
    for t in range(7, len(ids)):
        eng.decode([0], [ids[t]])
        np.testing.assert_allclose(eng.logits(0), want[t], atol=2e-4, rtol=1e-4)


def test_real_gemma3_config():
    with open_gguf(catalog_model_file("gemma3-270m")) as model:
        c, names = model.config, [s.name for s in model.plan.present]
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (
        640,
        4,
        1,
        256,
        262144,
    )
    assert c.attn_scale == 1 / 16 and c.embed_scale == pytest.approx(math.sqrt(640))
    assert c.layer_window == tuple(512 if i % 6 < 5 else 0 for i in range(18))
    assert c.layer_rope_base == tuple(1e4 if i % 6 < 5 else 1e6 for i in range(18))
    assert c.tied_output and "output" not in names and "q_norm" in names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(drop=("blk.3.attn_k_norm.weight",)), "'blk.3.attn_k_norm.weight' is missing"),
        (dict(extra={"blk.0.attn_output.bias": (32,)}), "not part of the gemma3 weight plan"),
        (dict(retype={"blk.1.ffn_norm.weight": Q.Q8_0}), "does not allow"),
        # the metadata says head_dim 12 while the tensors are made for 16
        (dict(meta={**G, "hd": 12}), "'blk.0.attn_q.weight' has shape (64, 32), expected (48, 32)"),
        (dict(meta={**G, "window": 0}), "'gemma3.attention.sliding_window' must be a positive"),
    ],
)
def test_plan_violations_name_the_tensor_or_key(tmp_path, change, message):
    write_gemma(tmp_path / "g.gguf", **change)
    with pytest.raises(ModelLoadError) as info:
        open_gguf(tmp_path / "g.gguf")
    assert message in info.value.message


def test_every_family_plan_is_consistent():
    for name, family in FAMILIES.items():
        assert family.name == name and get_family(name) is family
        roles = [p.role for s in family.plan.slots for p in s.parts]
        assert len(roles) == len(set(roles)), name  # a role names one tensor
        allocs = [s.alloc for s in family.plan.slots]
        assert len(allocs) == len(set(allocs)), name  # one GPU allocation per slot
        assert family.block in ("llama", "gemma3", "gpt_oss")
        required = {s.name for s in family.plan.slots if s.required}
        ffn = {"gate_exps", "up_exps", "down_exps"} if family.block == "gpt_oss" else {"gate_up"}
        assert {"token_embd", "output_norm", "qkv", "attn_output", *ffn} <= required
        assert ("down" in required) != (family.block == "gpt_oss")
    with pytest.raises(ModelLoadError, match="not supported"):
        get_family("gpt2")


def test_sentencepiece_with_space_prefix_on_the_phi3_fixture():
    """phi3's SentencePiece (add_space_prefix defaults to true): llama.cpp's ids on every prompt,
    the chat prompt too, where llama.cpp drops the whitespace after phi-3's special tokens (the
    RSTRIP attribute it sets by the model's name: "<|user|>\nWhat" -> <|user|> ▁ What)."""
    from runtime.gguf_header import read_header
    from runtime.tokenizer import Tokenizer
    from tests.reference_data import reference_fixture

    path, manifest, _ = reference_fixture("phi3-tiny")
    tok = Tokenizer.from_metadata(read_header(path).metadata)
    plain = [c for c in manifest["prompts"] if "<|" not in c["text"]]
    assert tok.kind == "gguf-spm" and len(plain) == 2
    for case in plain:
        assert tok.encode(case["text"]) == case["ids"] == case["sentencepiece_ids"]
        assert tok.decode(case["ids"]) == case["text"]  # llama.cpp drops the prefix space
    (chat,) = [c for c in manifest["prompts"] if "<|" in c["text"]]
    assert tok.encode(chat["text"]) == chat["ids"]
    assert tok.decode(chat["ids"]) == (  # what llama.cpp's detokenizer gives back for them
        "<|user|> What is the capital of France?<|end|><|assistant|>"
    )


@pytest.mark.parametrize("name", ["Phi-3 mini 4k instruct", "phi3 tiny", "Other model"])
def test_whitespace_after_special_tokens_is_dropped_for_phi3_names_only(name):
    """llama.cpp sets RSTRIP on every special token of a model *named* Phi-3, except <unk>,
    <s> and <|endoftext|>; no other model loses whitespace there."""
    from runtime.tokenizer import Tokenizer, TokenType

    pieces = ["<unk>", "<s>", "</s>", "<|user|>", "\u2581", "\n", "a"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.USER_DEFINED]
    meta = {
        "general.name": name,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.token_type": [int(t) for t in types] + [1, 1, 1],
        "tokenizer.ggml.scores": [0.0] * len(pieces),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }
    tok = Tokenizer.from_metadata(meta)
    phi3 = "phi" in name.lower()
    assert tok.encode("<|user|>\na") == ([3, 6] if phi3 else [3, 5, 6])
    assert tok.encode("</s>\na") == ([2, 6] if phi3 else [2, 5, 6])
    assert tok.encode("<s>\na") == [1, 5, 6]  # exempt
