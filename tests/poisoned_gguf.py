"""Tiny model files, healthy or deliberately broken, for the tests of REL-7 (runtime and GPU).

`tiny_model` writes a 2-layer llama of d_model 64 with tools.make_synthetic_gguf (~75 KB, loads
in milliseconds). The poisons patch the written bytes the way a damaged download or a hostile
publisher would: NaN block scales in chosen rows of a Q8_0 tensor, every tensor offset 0, bit
flips. Positions come from our own header walk (runtime.gguf_header), never guessed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType as Q

from runtime.gguf_header import read_header
from tools.make_synthetic_gguf import TINY_LLAMA, write_synthetic_model

VOCAB = 300
FP16_NAN = struct.pack("<e", float("nan"))


def tiny_model(path: Path, *, seed: int = 0, tied: bool = True, **metadata: Any) -> Path:
    """A healthy tiny llama unless `metadata` overrides say otherwise: `**{"llama.x": value}`."""
    return write_synthetic_model(
        path,
        n_layers=2,
        vocab_size=VOCAB,
        seed=seed,
        metadata={**TINY_LLAMA, **metadata},
        tied_output=tied,
    )


def poison_rows(path: Path, tensor: str, rows: list[int]) -> Path:
    """Set the fp16 scale of every Q8_0 block in `rows` of `tensor` to NaN (in place)."""
    info = next(t for t in read_header(path).tensors if t.name == tensor)
    assert info.qtype == Q.Q8_0, info
    block_bytes, per_row = 34, info.dims[0] // 32  # Q8_0: fp16 scale + 32 int8 values
    data = bytearray(path.read_bytes())
    for row in rows:
        for block in range(per_row):
            at = info.offset + (row * per_row + block) * block_bytes
            data[at : at + 2] = FP16_NAN
    path.write_bytes(bytes(data))
    return path


def fill_tensor(path: Path, tensor: str, value: float) -> Path:
    """Every value of the F32 `tensor` set to `value` (in place): e.g. 1e30, finite but
    overflowing float32 a few products later."""
    info = next(t for t in read_header(path).tensors if t.name == tensor)
    assert info.qtype == Q.F32, info
    data = bytearray(path.read_bytes())
    data[info.offset : info.offset + info.nbytes] = struct.pack("<f", value) * (info.nbytes // 4)
    path.write_bytes(bytes(data))
    return path


def tensor_info_offsets(path: Path) -> list[int]:
    """File positions of each tensor's u64 data-offset field, in table order."""
    header = read_header(path)
    data = path.read_bytes()
    positions, pos = [], 0
    for t in header.tensors:
        name = t.name.encode()
        pos = data.index(struct.pack("<Q", len(name)) + name, pos) + 8 + len(name)
        pos += 4 + 8 * len(t.dims) + 4  # n_dims, dims, type
        positions.append(pos)
        pos += 8
    return positions


def zero_offsets(path: Path) -> Path:
    """Every tensor's data offset set to 0: all of them read the first tensor's bytes."""
    data = bytearray(path.read_bytes())
    for at in tensor_info_offsets(path):
        data[at : at + 8] = bytes(8)
    path.write_bytes(bytes(data))
    return path
