"""Write a GGUF model with a real model's shapes, types and metadata but random weights.

Speed work on the GPU machine needs a model of the right size and weight types, not the right
numbers, and that machine has no model file. With `like=PATH` the metadata (tokenizer included)
is copied key for key with its original value types; without it, a built-in spec: `family`
"smollm2" (SmolLM2-135M-Instruct Q4_1, the default), "qwen2" (Qwen2.5-Coder-0.5B-Instruct
Q4_K_M), "gemma3" (Gemma-3-270M Q4_K_M) or "gpt-oss" (gpt-oss-20b MXFP4: 12.1 GB, written on
the GPU machine, never carried) (tools/synthetic_families.py), with a self-consistent
vocabulary that llama.cpp loads too.

Weights are built directly as quantized blocks: random payload bytes with explicit small fp16
scales chosen so every decoded weight is finite with a standard deviation near 0.02 (norm weights
near 1), which keeps activations of a random deep model in range.

    python -m tools.make_synthetic_gguf OUT.gguf [--like REAL.gguf | --family qwen2]
                                        [--layers N] [--vocab N] [--seed S] [--matrix-type Q4_K]

Tests build small or deliberately broken files with `metadata=` (values that replace or add
keys; with the built-in SmolLM2 spec the shapes follow them, e.g. `TINY_LLAMA`).
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf import GGUFWriter, LlamaFileType

from runtime.gguf_header import read_header
from runtime.models import get_family
from runtime.quants import BLOCK_SIZES
from tools import synthetic_families as fam

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: SmolLM2-135M-Instruct Q4_1, as llama.cpp's converter wrote it: key -> (value, GGUF type)
SMOLLM2_135M: dict[str, tuple[Any, V]] = {
    "general.type": ("model", V.STRING),
    "general.name": ("Synthetic SmolLM2 135M (random weights)", V.STRING),
    "llama.block_count": (30, V.UINT32),
    "llama.context_length": (8192, V.UINT32),
    "llama.embedding_length": (576, V.UINT32),
    "llama.feed_forward_length": (1536, V.UINT32),
    "llama.attention.head_count": (9, V.UINT32),
    "llama.attention.head_count_kv": (3, V.UINT32),
    "llama.rope.freq_base": (100000.0, V.FLOAT32),
    "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
    "general.file_type": (3, V.UINT32),  # MOSTLY_Q4_1
    "llama.vocab_size": (49152, V.UINT32),
    "llama.rope.dimension_count": (64, V.UINT32),
    "tokenizer.ggml.add_space_prefix": (False, V.BOOL),
    "tokenizer.ggml.add_bos_token": (False, V.BOOL),
    "tokenizer.ggml.model": ("gpt2", V.STRING),
    "tokenizer.ggml.pre": ("smollm", V.STRING),
    "tokenizer.ggml.bos_token_id": (1, V.UINT32),
    "tokenizer.ggml.eos_token_id": (2, V.UINT32),
    "tokenizer.ggml.unknown_token_id": (0, V.UINT32),
    "tokenizer.ggml.padding_token_id": (2, V.UINT32),
    "tokenizer.chat_template": (CHATML, V.STRING),
    "general.quantization_version": (2, V.UINT32),
}
#: Overrides for a tiny llama (d_model 64, 4 heads of 16, d_ff 128): a model that loads in
#: milliseconds, for tests that build many files.
TINY_LLAMA: dict[str, Any] = {
    "llama.embedding_length": 64,
    "llama.feed_forward_length": 128,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.rope.dimension_count": 16,
}
SMOLLM2_TYPES = {"token_embd": Q.Q8_0, "norm": Q.F32, "matrix": Q.Q4_1}


def byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: byte b is shown as this printable character."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def synthetic_vocab(
    vocab_size: int, specials: list[str] = SPECIALS
) -> tuple[list[str], list[int], list[str]]:
    """tokens, token types, merges: specials, the 256 byte tokens, then two-byte merges and,
    past those (vocabularies the size of qwen2's), three-byte merges of a pair and a byte."""
    chars = byte_chars()
    n_merges = vocab_size - len(specials) - 256
    n_pairs = min(max(n_merges, 0), 256 * 256)
    n_triples = n_merges - n_pairs
    if n_merges < 0 or n_triples > 256 * 256 * 256:
        raise ValueError(
            f"vocab_size must be in {len(specials) + 256}..{256**3 + 256**2 + 256 + len(specials)}"
        )
    pairs = [(a, b) for a in chars for b in chars][:n_pairs]
    triples = list(itertools.islice(((a + b, c) for a, b in pairs for c in chars), n_triples))
    merged = pairs + triples
    tokens = specials + chars + [a + b for a, b in merged]
    types = [3] * len(specials) + [1] * (256 + n_merges)  # 3 = control, 1 = normal
    return tokens, types, [f"{a} {b}" for a, b in merged]


def random_tensor(name: str, qtype: Q, shape: tuple[int, ...], rng) -> np.ndarray:
    """uint8 bytes of a tensor of numpy `shape`: (rows, row_bytes) or (nbytes,)."""
    block, size = BLOCK_SIZES[qtype]
    n_values = int(np.prod(shape))
    if qtype in (Q.F32, Q.F16):
        center = 1.0 if "norm" in name else 0.0
        x = center + rng.normal(0, 0.02, n_values)
        out = x.astype(np.float32 if qtype == Q.F32 else np.float16).view(np.uint8)
        return out.reshape(*shape[:-1], -1)
    n_blocks = n_values // block
    b = np.frombuffer(rng.bytes(n_blocks * size), np.uint8).reshape(n_blocks, size).copy()

    def f16(col: int, value: float) -> None:  # a jittered fp16 scale at byte `col` of each block
        scale = value * rng.uniform(0.5, 1.5, (n_blocks, 1))
        b[:, col : col + 2] = scale.astype(np.float16).view(np.uint8)

    std = 0.02
    if qtype == Q.Q8_0:
        f16(0, std / 74)  # int8 payload: std ~74
    elif qtype in (Q.Q4_0, Q.Q5_0):
        f16(0, std / (4.6 if qtype == Q.Q4_0 else 9.2))
    elif qtype == Q.Q4_1:
        f16(0, std / 4.6)
        b[:, 2:4] = np.full((n_blocks, 1), -7.5 * std / 4.6, np.float16).view(np.uint8)
    elif qtype == Q.Q4_K:  # value = d*sc*q - dmin*m with 6-bit sc, m averaging ~32
        f16(0, std / (4.6 * 32))
        f16(2, 7.5 * std / (4.6 * 32))
    elif qtype == Q.Q6_K:  # value = d*sc*(q-32), sc int8: keep it in 1..16
        b[:, 192:208] = rng.integers(1, 17, (n_blocks, 16), dtype=np.uint8)
        f16(208, std / (18.5 * 8.5))
    elif qtype == Q.MXFP4:  # value = 2^(e-128) * doubled e2m1 code (rms ~6): e near 128 - 8
        b[:, 0] = rng.integers(119, 122, n_blocks, dtype=np.uint8)
    return b.reshape(*shape[:-1], -1)


#: the metadata keys the tensor shapes follow (as suffixes of `{arch}.` keys)
_WIDTH_KEYS = (
    ".embedding_length",
    ".feed_forward_length",
    ".attention.head_count",
    ".attention.head_count_kv",
    ".attention.key_length",
)


def _override(meta: dict, overrides: Mapping[str, Any]) -> None:
    """Replace or add keys: a known key keeps its GGUF type, a new one gets one from its value."""
    for key, value in overrides.items():
        if key in meta:
            vtype = meta[key][1]
        else:
            vtype = V.STRING if isinstance(value, str) else V.FLOAT32
            if isinstance(value, bool):
                vtype = V.BOOL
            elif isinstance(value, int):
                vtype = V.UINT32
        meta[key] = (value, vtype)


def _builtin_plan(
    n_layers: int,
    vocab_size: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    tied_output: bool = True,
) -> tuple[dict, list[tuple[str, Q, tuple]]]:
    meta = dict(SMOLLM2_135M)
    meta["llama.block_count"] = (n_layers, V.UINT32)
    meta["llama.vocab_size"] = (vocab_size, V.UINT32)
    tokens, types, merges = synthetic_vocab(vocab_size)
    meta["tokenizer.ggml.tokens"] = (tokens, V.STRING)
    meta["tokenizer.ggml.token_type"] = (types, V.INT32)
    meta["tokenizer.ggml.merges"] = (merges, V.STRING)
    family = get_family("llama")
    # shapes follow the overridden widths; the other overrides may be deliberately broken
    widths = {k: v for k, v in (overrides or {}).items() if k.endswith(_WIDTH_KEYS)}
    config = family.config_from_metadata({**{k: v for k, (v, _) in meta.items()}, **widths})
    _override(meta, overrides or {})
    d_model = config.d_model
    plan = [("token_embd.weight", SMOLLM2_TYPES["token_embd"], (vocab_size, d_model))]
    layer_slots = [s for s in family.plan.layer_slots if s.required]  # no bias; tied head
    for i in range(n_layers):
        for slot in layer_slots:
            for part in slot.parts:
                kind = "norm" if slot.kind == "vector" else "matrix"
                plan.append((part.tensor_name(i), SMOLLM2_TYPES[kind], part.shape(config)))
    plan.append(("output_norm.weight", Q.F32, (d_model,)))
    if not tied_output:  # a head of its own, as most models have (SmolLM2 reuses token_embd)
        plan.append(("output.weight", SMOLLM2_TYPES["matrix"], (vocab_size, d_model)))
    return meta, plan


FAMILIES = ("smollm2", "qwen2", "gemma3", "gpt-oss")


def _family_plan(
    family: str,
    n_layers: int | None,
    vocab_size: int | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tied_output: bool = True,
) -> tuple[dict, list[tuple[str, Q, tuple]]]:
    """The built-in spec of `family` (FAMILIES), its real layer count and vocabulary size unless
    given. `overrides` and `tied_output` shape the smollm2 spec; other families take only the
    override values (their shapes are fixed)."""
    if family == "smollm2":
        layers, vocab = 30 if n_layers is None else n_layers, vocab_size or 49152
        return _builtin_plan(layers, vocab, overrides, tied_output=tied_output)
    if not tied_output:
        raise ValueError(f"tied_output=False is only for the smollm2 spec, not {family}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
    n_layers = fam.REAL_LAYERS[family] if n_layers is None else n_layers
    vocab = vocab_size or fam.REAL_VOCAB[family]
    if family == "qwen2":
        meta = dict(fam.QWEN2_META)
        tokens, types, merges = synthetic_vocab(vocab)
        meta["tokenizer.ggml.merges"] = (merges, V.STRING)
        for key, token in (
            ("bos", "<|endoftext|>"),
            ("eos", "<|im_end|>"),
            ("padding", "<|endoftext|>"),
        ):
            meta[f"tokenizer.ggml.{key}_token_id"] = (tokens.index(token), V.UINT32)
        meta["tokenizer.chat_template"] = (CHATML, V.STRING)
        plan = fam.qwen2_tensors(n_layers, vocab)
    elif family == "gpt-oss":  # no chat template: harmony's is not available (decision 0013)
        meta = dict(fam.GPT_OSS_META)
        tokens, types, merges = fam.harmony_vocab(vocab, lambda n: synthetic_vocab(n, []))
        meta["tokenizer.ggml.merges"] = (merges, V.STRING)
        for key, token in (
            ("bos", "<|startoftext|>"),
            ("eos", "<|return|>"),
            ("padding", "<|endoftext|>"),
        ):
            meta[f"tokenizer.ggml.{key}_token_id"] = (tokens.index(token), V.UINT32)
        plan = fam.gpt_oss_tensors(n_layers, vocab)
    else:
        meta = dict(fam.GEMMA3_META)
        tokens, scores, types = fam.sentencepiece_vocab(vocab)
        meta["tokenizer.ggml.scores"] = (scores, V.FLOAT32)
        plan = fam.gemma3_tensors(n_layers, vocab)
    meta["tokenizer.ggml.tokens"] = (tokens, V.STRING)
    meta["tokenizer.ggml.token_type"] = (types, V.INT32)
    meta[f"{family}.block_count"] = (n_layers, V.UINT32)
    meta["general.architecture"] = (family, V.STRING)
    _override(meta, overrides or {})
    return meta, plan


def _like_plan(like: Path, n_layers: int | None) -> tuple[dict, list[tuple[str, Q, tuple]]]:
    header = read_header(like)
    meta = {}
    for key, value in header.metadata.items():
        vtype, etype = header.value_types[key]
        meta[key] = (value, V(etype) if vtype == V.ARRAY else V(vtype))
    arch = meta["general.architecture"][0]
    keep = n_layers if n_layers is not None else meta[f"{arch}.block_count"][0]
    meta[f"{arch}.block_count"] = (keep, V.UINT32)
    plan = []
    for t in header.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m is None or int(m.group(1)) < keep:
            plan.append((t.name, t.qtype, t.shape))
    return meta, plan


def write_synthetic_model(
    out_path: str | Path,
    like: str | Path | None = None,
    *,
    seed: int = 0,
    n_layers: int | None = None,
    vocab_size: int | None = None,
    matrix_type: str | None = None,
    family: str = "smollm2",
    metadata: Mapping[str, Any] | None = None,
    tied_output: bool = True,
) -> Path:
    """Write the synthetic GGUF to `out_path` and return it. See the module docstring.

    `family` picks the built-in spec (without `like`); `n_layers` and `vocab_size` default to
    the real model's.
    `matrix_type` (e.g. "Q4_K") replaces the type of every per-layer matrix, to time kernels of
    each weight type at real shapes; rows must be whole blocks of that type. `metadata`
    replaces or adds keys (see `_override`); with the built-in spec the shapes follow it, and
    `tied_output=False` adds an `output.weight` head of its own.
    """
    out_path = Path(out_path)
    if like is not None:
        meta, plan = _like_plan(Path(like), n_layers)
        _override(meta, metadata or {})  # values only: the shapes stay those of the `like` file
    else:
        meta, plan = _family_plan(family, n_layers, vocab_size, metadata, tied_output=tied_output)
    for name, qtype, _ in plan:  # e.g. a --like file with IQ or Q2_K tensors
        if qtype not in BLOCK_SIZES:
            supported = ", ".join(q.name for q in BLOCK_SIZES)
            raise ValueError(
                f"{name}: weight type {qtype.name} cannot be synthesized (supported: {supported})"
            )
    if matrix_type is not None:
        new = Q[matrix_type]
        if new not in BLOCK_SIZES:
            raise ValueError(f"matrix_type {matrix_type} is not a supported type")
        plan = [(n, new if n.startswith("blk.") and len(s) == 2 else q, s) for n, q, s in plan]
        # the file type the metadata declares follows (quant_kind reads it)
        file_type = LlamaFileType.__members__.get(f"MOSTLY_{new.name}", LlamaFileType.GUESSED)
        meta["general.file_type"] = (int(file_type), V.UINT32)
        for name, qtype, shape in plan:
            if shape[-1] % BLOCK_SIZES[qtype][0]:
                raise ValueError(
                    f"{name}: rows of {shape[-1]} values are not whole {qtype.name} blocks"
                )
    arch = meta.pop("general.architecture", ("llama", V.STRING))[0]
    writer = GGUFWriter(out_path, arch)  # writes general.architecture itself
    for key, (value, vtype) in meta.items():
        if key == "general.alignment":
            writer.add_custom_alignment(value)
        elif isinstance(value, list):
            if not value:
                continue  # GGUFWriter cannot write an empty array; no loader needs one
            writer.add_key_value(key, value, V.ARRAY, sub_type=vtype)
        else:
            writer.add_key_value(key, value, vtype)
    for name, qtype, shape in plan:
        block, size = BLOCK_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        writer.add_tensor_info(
            name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, qtype, shape in plan:  # one tensor in memory at a time
        writer.write_tensor_data(random_tensor(name, qtype, shape, rng))
    writer.close()
    return out_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="where to write the .gguf")
    p.add_argument("--like", type=Path, help="real GGUF to copy metadata, shapes and types from")
    p.add_argument("--family", choices=FAMILIES, default="smollm2", help="built-in spec")
    p.add_argument("--layers", type=int, help="keep only this many layers (default: all)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the real model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matrix-type", help="give every per-layer matrix this type, e.g. Q4_K")
    args = p.parse_args(argv)
    path = write_synthetic_model(
        args.out, args.like, seed=args.seed, n_layers=args.layers, matrix_type=args.matrix_type,
        family=args.family, vocab_size=args.vocab,
    )  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
