"""open_gguf: agreement with gguf-py's GGUFReader, roles, and a clear error for every bad file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf import quants as ref

from runtime.default_model import default_model_path
from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf

# A tiny llama whose tensors use every supported type (a real Q4_K_M file mixes several).
D, HEADS, KV_HEADS, FF, VOCAB, LAYERS = 256, 4, 2, 512, 64, 2
KV = D // HEADS * KV_HEADS
TYPES = {
    "token_embd": Q.Q8_0,
    "attn_q": Q.Q4_K,
    "attn_k": Q.Q6_K,
    "attn_v": Q.Q5_0,
    "attn_output": Q.Q4_0,
    "ffn_gate": Q.Q4_1,
    "ffn_up": Q.F16,
    "ffn_down": Q.Q6_K,
    "output": Q.Q4_1,
}
SHAPES = {
    "attn_q": (D, D),
    "attn_k": (KV, D),
    "attn_v": (KV, D),
    "attn_output": (D, D),
    "ffn_gate": (FF, D),
    "ffn_up": (FF, D),
    "ffn_down": (D, FF),
}


def _bytes(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """uint8 (rows, row_bytes): real quantization where gguf-py has it, else sane blocks."""
    if qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.F16):
        x = rng.normal(0, 0.02, shape).astype(np.float32)
        return ref.quantize(x, qtype).view(np.uint8).reshape(shape[0], -1)
    size = {Q.Q4_K: 144, Q.Q6_K: 210}[qtype]
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // 256, size), dtype=np.uint8)
    scale = np.full((1, 1), 1e-4, np.float16).view(np.uint8)
    for col in (0, 2) if qtype == Q.Q4_K else (208,):  # Q4_K: d and dmin; Q6_K: d
        blocks[:, col : col + 2] = scale
    return blocks.reshape(shape[0], -1)


def write_tiny(
    path: Path,
    *,
    drop_key: str | None = None,
    drop_tensor: str | None = None,
    reshape: dict[str, tuple[int, int]] | None = None,
    retype: dict[str, Q] | None = None,
    tied: bool = False,
    arch: str = "llama",
    layer: dict[str, tuple[Q, tuple[int, ...]]] | None = None,  # suffix -> type, shape
) -> Path:
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, arch)
    keys = {
        f"{arch}.block_count": LAYERS,
        f"{arch}.embedding_length": D,
        f"{arch}.feed_forward_length": FF,
        f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.context_length": 512,
    }
    for key, value in keys.items():
        if key != drop_key:
            w.add_uint32(key, value)
    if drop_key != f"{arch}.attention.layer_norm_rms_epsilon":
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(VOCAB)])
    w.add_string("tokenizer.ggml.model", "gpt2")
    tensors: list[tuple[str, Q, tuple[int, ...]]] = [("token_embd.weight", Q.Q8_0, (VOCAB, D))]
    for i in range(LAYERS):
        default = {f"{r}.weight": (TYPES[r], shape) for r, shape in SHAPES.items()}
        for suffix, (qtype, shape) in (layer or default).items():
            tensors.append((f"blk.{i}.{suffix}", qtype, shape))
        tensors.append((f"blk.{i}.attn_norm.weight", Q.F32, (D,)))
        tensors.append((f"blk.{i}.ffn_norm.weight", Q.F32, (D,)))
    tensors.append(("output_norm.weight", Q.F32, (D,)))
    if not tied:
        tensors.append(("output.weight", TYPES["output"], (VOCAB, D)))
    for name, qtype, shape in tensors:
        if name == drop_tensor:
            continue
        shape = (reshape or {}).get(name, shape)
        qtype = (retype or {}).get(name, qtype)
        if qtype == Q.F32 and len(shape) == 1:
            w.add_tensor(name, 1 + rng.normal(0, 0.1, shape).astype(np.float32))
        elif qtype == Q.Q2_K:  # a real type we do not support: 84-byte blocks
            w.add_tensor(
                name, np.zeros((shape[0], shape[1] // 256 * 84), np.uint8), raw_dtype=qtype
            )
        else:
            w.add_tensor(name, _bytes(qtype, shape, rng), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "tiny.gguf")


def test_tiny_mixed_file_matches_gguf_reader(tiny: Path):
    model = open_gguf(tiny)
    reader = GGUFReader(tiny)
    assert len(reader.tensors) == len(model.tensors)
    for t in reader.tensors:
        rec = model.tensors[t.name]
        assert rec.qtype == t.tensor_type
        assert rec.shape == tuple(reversed(t.shape.tolist()))
        assert rec.offset == t.data_offset and rec.nbytes == t.n_bytes
        assert rec.raw.dtype == np.uint8
        if len(rec.shape) == 2:
            assert rec.raw.shape[0] == rec.shape[0]
        expected = ref.dequantize(t.data, t.tensor_type).reshape(rec.shape)
        got = rec.dequantize()
        assert got.dtype == np.float32 and got.shape == rec.shape
        np.testing.assert_array_equal(got, expected)
    c = model.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (
        LAYERS, D, HEADS, KV_HEADS, D // HEADS, FF,
    )  # fmt: skip
    assert c.vocab_size == VOCAB and not c.tied_output and c.rope_style == "norm"
    assert model.weight("output").name == "output.weight"
    assert model.weight("attn_k", 1).name == "blk.1.attn_k.weight"
    assert model.has_weight("ffn_up", 0) and not model.has_weight("attn_q_bias", 0)
    assert not model.has_weight("attn_q", LAYERS) and not model.has_weight("no_such_role", 0)
    with pytest.raises(KeyError):
        model.weight("attn_qkv", 0)
    model.close()


def test_qwen2_roles_with_qkv_bias(tmp_path: Path):
    layer = {f"{r}.weight": (TYPES[r], shape) for r, shape in SHAPES.items()}
    layer |= {"attn_q.bias": (Q.F32, (D,)), "attn_k.bias": (Q.F32, (KV,))}
    layer |= {"attn_v.bias": (Q.F32, (KV,))}
    model = open_gguf(write_tiny(tmp_path / "qwen2.gguf", arch="qwen2", tied=True, layer=layer))
    c = model.config
    assert c.arch == "qwen2" and c.qkv_bias and c.rope_style == "neox" and c.tied_output
    assert model.weight("attn_k_bias", 1).name == "blk.1.attn_k.bias"
    assert model.weight("attn_k_bias", 1).shape == (KV,)
    assert [p.role for p in model.family.plan.slot("qkv").parts] == ["attn_q", "attn_k", "attn_v"]
    del layer["attn_v.bias"]  # the bias is required for qwen2
    msg = _load_error(write_tiny(tmp_path / "q2b.gguf", arch="qwen2", layer=layer))
    assert "'blk.0.attn_v.bias'" in msg


def test_phi3_roles_with_fused_qkv_and_gate_up(tmp_path: Path):
    layer = {
        "attn_qkv.weight": (Q.Q4_K, (D + 2 * KV, D)),  # rows: q, then k, then v
        "attn_output.weight": (Q.Q4_0, (D, D)),
        "ffn_up.weight": (Q.Q4_1, (2 * FF, D)),  # gate rows, then up rows
        "ffn_down.weight": (Q.Q6_K, (D, FF)),
    }
    model = open_gguf(write_tiny(tmp_path / "phi3.gguf", arch="phi3", layer=layer))
    c, plan = model.config, model.family.plan
    assert c.arch == "phi3" and c.rope_style == "neox" and not c.qkv_bias
    assert [p.role for p in plan.slot("qkv").parts] == ["attn_qkv"]
    assert [p.role for p in plan.slot("gate_up").parts] == ["ffn_gate_up"]
    assert model.weight("attn_qkv", 0).shape == (D + 2 * KV, D)
    assert model.weight("ffn_gate_up", 1).name == "blk.1.ffn_up.weight"
    assert model.weight("ffn_gate_up", 1).shape == (2 * FF, D)
    assert not model.has_weight("attn_q", 0) and not model.has_weight("ffn_gate", 0)
    layer["ffn_up.weight"] = (Q.Q4_1, (FF, D))  # an unfused up matrix is the wrong shape
    msg = _load_error(write_tiny(tmp_path / "phi3b.gguf", arch="phi3", layer=layer))
    assert "'blk.0.ffn_up.weight'" in msg and f"expected ({2 * FF}, {D})" in msg


def test_tied_output_resolves_to_token_embd(tmp_path: Path):
    model = open_gguf(write_tiny(tmp_path / "tied.gguf", tied=True))
    assert model.config.tied_output
    assert model.weight("output") is model.weight("token_embd")
    assert model.has_weight("output")


def test_default_model_matches_gguf_reader():
    path = default_model_path()
    model = open_gguf(path)
    c = model.config
    assert (c.arch, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads) == ("llama", 30, 576, 9, 3)
    assert (c.head_dim, c.d_ff, c.vocab_size, c.rope_dim) == (64, 1536, 49152, 64)
    assert c.tied_output and not c.qkv_bias and c.rope_base == 100000.0
    assert model.quant_kind == "Q4_1"
    assert model.weight("output").qtype == Q.Q8_0 and model.weight("attn_q", 0).qtype == Q.Q4_1
    reader = GGUFReader(path)  # the independent parser
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        theirs = field.contents()
        if isinstance(theirs, float):
            assert model.metadata[key] == pytest.approx(theirs, rel=1e-7), key
        else:
            assert model.metadata[key] == theirs, key
    assert set(model.metadata) == {k for k in reader.fields if not k.startswith("GGUF.")}
    assert model.total_tensor_bytes == sum(t.n_bytes for t in reader.tensors)
    for t in reader.tensors:
        rec = model.tensors[t.name]
        assert (rec.qtype, rec.offset) == (t.tensor_type, t.data_offset)
        assert rec.shape == tuple(reversed(t.shape.tolist()))
    q = model.weight("attn_q", 7)
    np.testing.assert_array_equal(q.raw, [t for t in reader.tensors if t.name == q.name][0].data)


# --- damaged and unsupported files ------------------------------------------------------------


def _info_pos(data: bytes, name: str) -> int:
    """Offset of the u32 type field in tensor `name`'s info record."""
    i = data.index(name.encode()) + len(name)
    (n_dims,) = struct.unpack_from("<I", data, i)
    return i + 4 + 8 * n_dims


def _patch(path: Path, fn) -> Path:
    data = bytearray(path.read_bytes())
    fn(data)
    path.write_bytes(bytes(data))
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        open_gguf(path)
    assert str(path) in info.value.message
    return info.value.message


def test_bad_magic(tiny: Path):
    msg = _load_error(_patch(tiny, lambda d: d.__setitem__(slice(0, 4), b"GGML")))
    assert "magic" in msg and "GGUF" in msg


def test_version_2_rejected(tiny: Path):
    msg = _load_error(_patch(tiny, lambda d: struct.pack_into("<I", d, 4, 2)))
    assert "version 2" in msg and "expected 3" in msg


@pytest.mark.parametrize("count", [0, 1 << 40])
def test_insane_tensor_count(tiny: Path, count: int):
    msg = _load_error(_patch(tiny, lambda d: struct.pack_into("<Q", d, 8, count)))
    assert f"tensor count {count}" in msg


@pytest.mark.parametrize("keep", [3, 20, 200, 3000, -1000, -1])
def test_truncated_file(tiny: Path, keep: int):
    data = tiny.read_bytes()
    tiny.write_bytes(data[:keep])
    msg = _load_error(tiny)
    assert "truncated" in msg or "too short" in msg


def test_truncated_data_names_the_tensor(tiny: Path):
    tiny.write_bytes(tiny.read_bytes()[:-1000])
    assert "'output.weight'" in _load_error(tiny)  # the last tensor is the one cut short


def test_tensor_offset_beyond_eof(tiny: Path):
    def far(d: bytearray) -> None:
        struct.pack_into("<Q", d, _info_pos(bytes(d), "blk.0.attn_v.weight") + 4, 1 << 32)

    msg = _load_error(_patch(tiny, far))
    assert "'blk.0.attn_v.weight'" in msg and "beyond the end" in msg


def test_unknown_type_id(tiny: Path):
    def bad(d: bytearray) -> None:
        struct.pack_into("<I", d, _info_pos(bytes(d), "blk.1.ffn_up.weight"), 99)

    msg = _load_error(_patch(tiny, bad))
    assert "'blk.1.ffn_up.weight'" in msg and "type id 99" in msg and "Q4_K" in msg


def test_unsupported_known_type(tmp_path: Path):
    path = write_tiny(tmp_path / "q2k.gguf", retype={"blk.0.ffn_gate.weight": Q.Q2_K})
    msg = _load_error(path)
    assert "'blk.0.ffn_gate.weight'" in msg and "Q2_K" in msg and "not supported" in msg


@pytest.mark.parametrize(
    "key", ["llama.feed_forward_length", "llama.attention.layer_norm_rms_epsilon"]
)
def test_missing_metadata_key(tmp_path: Path, key: str):
    msg = _load_error(write_tiny(tmp_path / "nokey.gguf", drop_key=key))
    assert repr(key) in msg and "missing" in msg


def test_missing_tensor(tmp_path: Path):
    msg = _load_error(write_tiny(tmp_path / "not.gguf", drop_tensor="blk.1.attn_k.weight"))
    assert "'blk.1.attn_k.weight'" in msg and "missing" in msg and f"({KV}, {D})" in msg


def test_wrong_shape(tmp_path: Path):
    path = write_tiny(tmp_path / "shape.gguf", reshape={"blk.0.attn_q.weight": (D, 2 * D)})
    msg = _load_error(path)
    assert "'blk.0.attn_q.weight'" in msg and f"({D}, {2 * D})" in msg
    assert f"expected ({D}, {D})" in msg


def test_unsupported_architecture(tmp_path: Path):
    msg = _load_error(write_tiny(tmp_path / "gpt2.gguf", arch="gpt2"))
    assert "'gpt2'" in msg and "llama" in msg


def test_missing_file(tmp_path: Path):
    _load_error(tmp_path / "absent.gguf")


def test_huge_array_length_fails_fast(tiny: Path):
    # tokenizer.ggml.tokens claims 2**60 strings: refused before any is read
    def huge(d: bytearray) -> None:
        i = bytes(d).index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4
        struct.pack_into("<Q", d, i, 1 << 60)

    msg = _load_error(_patch(tiny, huge))
    assert "'tokenizer.ggml.tokens'" in msg and "truncated or corrupt" in msg


def test_random_damage_is_always_a_model_load_error(tiny: Path):
    original = tiny.read_bytes()
    header_end = original.index(b"output.weight") + 64  # the tensor table ends near here
    rng = np.random.default_rng(5)
    for _ in range(150):
        data = bytearray(original)
        for pos in rng.integers(0, header_end, size=3):
            data[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        tiny.write_bytes(bytes(data))
        try:
            open_gguf(tiny).close()  # some flips land in harmless places: then it loads
        except ModelLoadError as e:
            assert str(tiny) in e.message


def test_absurd_block_count_fails_at_first_absent_layer(tiny: Path):
    def many(d: bytearray) -> None:
        i = bytes(d).index(b"llama.block_count") + len("llama.block_count") + 4
        struct.pack_into("<I", d, i, 0xFFFFFFFF)

    msg = _load_error(_patch(tiny, many))
    assert f"'blk.{LAYERS}.attn_norm.weight'" in msg and "missing" in msg


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "gemma3-270m"])
def test_quant_kind_is_the_files_declared_type(name):
    """Q4_K_M files mix Q4_K, Q5_0, Q6_K and Q8_0 (Qwen2.5's largest share is Q5_0, Gemma 3's
    its Q8_0 embedding): /health reports the type the file declares, llama.cpp's name for it."""
    from collections import Counter

    from tests.reference_data import catalog_model_file

    with open_gguf(catalog_model_file(name)) as model:
        assert model.metadata["general.file_type"] == 15 and model.quant_kind == "Q4_K_M"
        by_type = Counter()
        for t in model.tensors.values():
            by_type[t.qtype.name] += t.nbytes
        assert by_type.most_common(1)[0][0] in ("Q5_0", "Q8_0")  # what it said before


def test_quant_kind_without_a_file_type_is_the_dominant_type(tmp_path: Path):
    model = open_gguf(write_tiny(tmp_path / "t.gguf"))
    assert "general.file_type" not in model.metadata
    by_type = {}
    for t in model.tensors.values():
        if len(t.shape) == 2:
            by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.nbytes
    assert model.quant_kind == max(by_type, key=by_type.get)


def test_quant_kind_of_a_gpt_oss_file_is_the_specs_mxfp4():
    """llama.cpp's converter declares a gpt-oss file MOSTLY_MXFP4_MOE (38): read here with
    gguf-py, not our walk. The spec's /health names that format "MXFP4" (M0-W-1320, W-1823);
    every other declared type keeps llama.cpp's name (Q4_K_M, Q4_0, ...)."""
    from gguf import LlamaFileType

    from runtime.gguf_file import _FILE_TYPES
    from tests.reference_data import reference_fixture

    path, _, _ = reference_fixture("gpt-oss-tiny")
    field = GGUFReader(path).get_field("general.file_type")
    assert int(field.parts[field.data[0]][0]) == LlamaFileType.MOSTLY_MXFP4_MOE
    with open_gguf(path) as model:
        assert model.quant_kind == "MXFP4"
    for t in LlamaFileType:
        if t.name not in ("GUESSED", "MOSTLY_MXFP4_MOE"):
            assert _FILE_TYPES[t.value] == t.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    assert _FILE_TYPES[LlamaFileType.MOSTLY_Q4_0] == "Q4_0"
