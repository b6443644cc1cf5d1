"""tools.make_synthetic_gguf: files open_gguf accepts, with the real model's shapes and types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from runtime.default_model import default_model_path
from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf
from runtime.gguf_header import read_header
from tools import make_synthetic_gguf as syn


def test_builtin_spec_small_variant(tmp_path: Path):
    path = syn.write_synthetic_model(tmp_path / "s.gguf", n_layers=2, vocab_size=400, seed=1)
    model = open_gguf(path)
    c = model.config
    assert (c.arch, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff) == (
        "llama", 2, 576, 9, 3, 1536,
    )  # fmt: skip
    assert c.vocab_size == 400 and c.tied_output and c.rope_base == 100000.0
    assert model.quant_kind == "Q4_1"
    assert model.weight("token_embd").qtype == Q.Q8_0
    assert model.weight("attn_norm", 1).qtype == Q.F32
    for rec in model.tensors.values():
        x = rec.dequantize()
        assert np.isfinite(x).all(), rec.name
        if "norm" in rec.name:
            assert abs(float(x.mean()) - 1.0) < 0.05, rec.name
        else:  # weights of a plausible scale, zero-centred
            assert 0.005 < float(x.std()) < 0.05 and abs(float(x.mean())) < 0.005, rec.name
    # the synthetic vocabulary is a consistent byte-level BPE
    tokens = model.metadata["tokenizer.ggml.tokens"]
    merges = model.metadata["tokenizer.ggml.merges"]
    assert len(tokens) == 400 == len(set(tokens))
    assert len(model.metadata["tokenizer.ggml.token_type"]) == 400
    known = set(tokens)
    assert all(a in known and b in known and a + b in known for a, b in map(str.split, merges))
    assert tokens[model.metadata["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert "<|im_start|>" in model.metadata["tokenizer.chat_template"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    a = syn.write_synthetic_model(tmp_path / "a.gguf", n_layers=1, vocab_size=300, seed=3)
    b = syn.write_synthetic_model(tmp_path / "b.gguf", n_layers=1, vocab_size=300, seed=3)
    c = syn.write_synthetic_model(tmp_path / "c.gguf", n_layers=1, vocab_size=300, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_builtin_plan_is_the_real_model_table():
    real = read_header(default_model_path())
    meta, plan = syn._builtin_plan(30, 49152)
    assert {n: (q, s) for n, q, s in plan} == {t.name: (t.qtype, t.shape) for t in real.tensors}
    for key, (value, vtype) in meta.items():
        if key.startswith("tokenizer.ggml.") and isinstance(value, list):
            continue  # the vocabulary itself is synthetic
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        if isinstance(value, float):  # stored as float32
            assert real.metadata[key] == float(np.float32(value)), key
        else:
            assert real.metadata[key] == value, key
        assert real.value_types[key] == (vtype, None), key


def test_like_the_real_model_copies_metadata_exactly(tmp_path: Path, capsys: pytest.CaptureFixture):
    real_path = default_model_path()
    path = tmp_path / "like.gguf"
    syn.main([str(path), "--like", str(real_path), "--layers", "2", "--seed", "9"])
    assert f"wrote {path}" in capsys.readouterr().out
    real, fake = read_header(real_path), read_header(path)
    assert fake.metadata.pop("llama.block_count") == 2
    assert real.metadata.pop("llama.block_count") == 30
    assert fake.metadata == real.metadata  # tokenizer included
    fake.value_types.pop("llama.block_count")
    real.value_types.pop("llama.block_count")
    assert fake.value_types == real.value_types
    kept = {t.name: (t.qtype, t.shape) for t in real.tensors if not t.name.startswith("blk.")}
    kept |= {
        t.name: (t.qtype, t.shape) for t in real.tensors if t.name.startswith(("blk.0.", "blk.1."))
    }
    assert {t.name: (t.qtype, t.shape) for t in fake.tensors} == kept
    model = open_gguf(path)
    assert np.isfinite(model.weight("output").dequantize()).all()
    assert np.isfinite(model.weight("ffn_down", 1).dequantize()).all()


def test_matrix_type_override(tmp_path: Path):
    # Q5_0 (32-value blocks) fits every matrix; the K-quants' 256-value blocks do not fit
    # SmolLM2's 576-wide rows, which is why its Q4_K_M file falls back to other types there
    path = syn.write_synthetic_model(
        tmp_path / "q5.gguf", n_layers=1, vocab_size=300, matrix_type="Q5_0"
    )
    model = open_gguf(path)
    assert model.quant_kind == "Q5_0" and model.weight("token_embd").qtype == Q.Q8_0
    assert model.weight("ffn_down", 0).qtype == Q.Q5_0
    assert model.weight("attn_norm", 0).qtype == Q.F32
    assert np.isfinite(model.weight("attn_v", 0).dequantize()).all()
    with pytest.raises(ValueError, match="576 values are not whole Q4_K blocks"):
        syn.write_synthetic_model(tmp_path / "k.gguf", n_layers=1, matrix_type="Q4_K")
    with pytest.raises(ValueError, match="Q2_K"):
        syn.write_synthetic_model(tmp_path / "x.gguf", n_layers=1, matrix_type="Q2_K")


def test_like_a_file_of_an_unsupported_type_names_the_tensor(tmp_path: Path, monkeypatch):
    from gguf import GGUFWriter

    like = tmp_path / "q2k.gguf"
    writer = GGUFWriter(like, "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 84), np.uint8), raw_dtype=Q.Q2_K)
    writer.add_tensor("output_norm.weight", np.ones(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # the header reader refuses the type already (ModelLoadError); the tool's own check
    # (ValueError) stands behind it for a reader that accepts more types than we synthesize
    with pytest.raises((ValueError, ModelLoadError), match=r"blk\.0\.ffn_down\.weight.*Q2_K"):
        syn.write_synthetic_model(tmp_path / "out.gguf", like)
    assert not (tmp_path / "out.gguf").exists()
    # a plan the header reader let through: the tool's own check names tensor and type
    plan = [("blk.0.ffn_down.weight", Q.IQ4_NL, (4, 32))]
    monkeypatch.setattr(syn, "_like_plan", lambda like, n_layers: ({}, plan))
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_down\.weight: weight type IQ4_NL"):
        syn.write_synthetic_model(tmp_path / "out.gguf", like)
    assert not (tmp_path / "out.gguf").exists()


REAL_FILES = {
    "qwen2": Path("/work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "gemma3": Path("/work/models/gemma-3-270m-q4_k_m.gguf"),
}


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_family_plan_is_the_real_files_table(family: str):
    real_path = REAL_FILES[family]
    if not real_path.is_file():
        pytest.skip(f"{real_path} is not on this machine")
    real = read_header(real_path)
    meta, plan = syn._family_plan(family, None, None)
    assert {n: (q, s) for n, q, s in plan} == {t.name: (t.qtype, t.shape) for t in real.tensors}
    for key, (value, vtype) in meta.items():
        if key.startswith("tokenizer.ggml.") and isinstance(value, list):
            assert len(value) == len(real.metadata[key]) or key == "tokenizer.ggml.merges", key
            continue  # the vocabulary itself is synthetic
        if key in ("general.name", "tokenizer.chat_template") or key.endswith("_token_id"):
            continue  # synthetic ids for qwen2's specials, which sit first in our vocabulary
        stored = float(np.float32(value)) if isinstance(value, float) else value
        assert real.metadata[key] == stored, key
        assert real.value_types[key] == (vtype, None), key


def test_qwen2_family_small_variant_opens_with_the_mixed_types(tmp_path: Path):
    path = syn.write_synthetic_model(
        tmp_path / "q.gguf", family="qwen2", n_layers=3, vocab_size=700
    )
    model = open_gguf(path)
    c = model.config
    assert (c.arch, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff) == (
        "qwen2", 3, 896, 14, 2, 4864,
    )  # fmt: skip
    assert c.qkv_bias and not c.tied_output and c.vocab_size == 700
    types = [model.weight("attn_v", i).qtype for i in range(3)]
    assert types == [Q.Q8_0, Q.Q8_0, Q.Q5_0]  # layers 0 and 1 get more bits, as in the file
    assert model.weight("attn_q", 2).qtype == Q.Q5_0
    assert [model.weight("ffn_down", i).qtype for i in range(3)] == [Q.Q6_K, Q.Q6_K, Q.Q4_K]
    for rec in model.tensors.values():
        assert np.isfinite(rec.dequantize()).all(), rec.name
    tokens = model.metadata["tokenizer.ggml.tokens"]
    assert tokens[model.metadata["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"


def test_gemma3_family_small_variant(tmp_path: Path):
    path = syn.write_synthetic_model(
        tmp_path / "g.gguf", family="gemma3", n_layers=2, vocab_size=900
    )
    header = read_header(path)
    md = header.metadata
    assert md["general.architecture"] == "gemma3" and md["gemma3.block_count"] == 2
    assert md["gemma3.attention.sliding_window"] == 512 and md["gemma3.attention.key_length"] == 256
    tokens, scores = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"]
    assert len(tokens) == len(set(tokens)) == len(scores) == 900
    assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"] and tokens[4 + 0x41] == "<0x41>"
    shapes = {t.name: (t.qtype, t.shape) for t in header.tensors}
    assert shapes["blk.1.attn_q.weight"] == (Q.Q5_0, (1024, 640))
    assert shapes["blk.1.attn_output.weight"] == (Q.Q4_K, (640, 1024))
    assert shapes["blk.1.attn_q_norm.weight"] == (Q.F32, (256,))
    assert "output.weight" not in shapes  # tied to token_embd


def test_bpe_vocabulary_past_the_two_byte_merges_stays_consistent():
    tokens, types, merges = syn.synthetic_vocab(151936)
    assert len(tokens) == len(set(tokens)) == len(types) == 151936
    known = set(tokens)
    assert all(a in known and b in known and a + b in known for a, b in map(str.split, merges))
    assert len(max(tokens[len(syn.SPECIALS) :], key=len)) == 3


def test_gpt_oss_family_plan_is_the_real_20b_files_table():
    """gpt-oss-20b's MXFP4 GGUF (ggml-org's, as llama.cpp loads it): 459 tensors, 289 F32,
    72 MXFP4 expert tensors, the other 98 matrices Q8_0, 12.1 GB; MXFP4 holds most bytes, so
    /health's quant_kind says MXFP4."""
    from collections import Counter

    from runtime.quants import row_bytes

    meta, plan = syn._family_plan("gpt-oss", None, None)
    counts = Counter(q for _, q, _ in plan)
    assert len(plan) == 459 and counts == {Q.F32: 289, Q.MXFP4: 72, Q.Q8_0: 98}
    by_type = Counter()
    for _, qtype, shape in plan:
        by_type[qtype] += int(np.prod(shape[:-1])) * row_bytes(qtype, shape[-1])
    assert by_type.most_common(1)[0][0] == Q.MXFP4
    assert 12.0e9 < sum(by_type.values()) < 12.2e9
    shapes = {n: s for n, _, s in plan}
    assert shapes["blk.23.ffn_gate_exps.weight"] == (32, 2880, 2880)
    assert shapes["blk.0.attn_q.weight"] == (4096, 2880) and shapes["output.weight"][0] == 201088
    tokens = meta["tokenizer.ggml.tokens"][0]
    assert len(tokens) == len(set(tokens)) == 201088
    assert tokens[199998] == "<|startoftext|>" and tokens[200012] == "<|call|>"
    assert meta["tokenizer.ggml.eos_token_id"][0] == 200002  # <|return|>, as the real file
    assert meta["tokenizer.ggml.pre"][0] == "gpt-4o"


def test_gpt_oss_family_small_variant_runs_on_the_numpy_engine(tmp_path: Path):
    from runtime.numpy_engine import NumpyEngine
    from runtime.tokenizer import Tokenizer

    path = syn.write_synthetic_model(
        tmp_path / "o.gguf", family="gpt-oss", n_layers=2, vocab_size=1500
    )
    with open_gguf(path) as model:
        c = model.config
        assert model.quant_kind == "MXFP4" and model.family.block == "gpt_oss"
        assert c.layer_window == (128, 0) and c.moe.n_experts == 32 and c.moe.top_k == 4
        assert c.rope_yarn.factor == 32.0 and c.rope_yarn.truncate is False
        tok = Tokenizer.from_metadata(model.metadata)
        engine = NumpyEngine.load(model, max_context=16)
    tokens = model.metadata["tokenizer.ggml.tokens"]
    assert {tokens[i] for i in tok.eog_ids} == {"<|return|>", "<|call|>", "<|endoftext|>"}
    logits = engine.prefill_all_logits(0, tok.encode("a short prompt"))
    assert np.isfinite(logits).all() and logits.std() > 0.1  # random weights, live activations
