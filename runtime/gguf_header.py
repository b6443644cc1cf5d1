"""A bounds-checked walk over a GGUF header, before anything trusts its numbers.

gguf-py's `GGUFReader` believes every length it reads: a truncated or corrupted file makes it
raise bare numpy errors, or (a huge array length over a short file) spin for a very long time.
This walk reads the same structure with `struct`, checks every length and offset against the
file size as it goes, and names the key or tensor at fault. It yields the metadata as plain
Python values and the tensor table; `runtime.gguf_file` builds on it.

Layout (GGUF v3, little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
kv_count x (string key, u32 type, value), tensor_count x (string name, u32 n_dims,
n_dims x u64 dims fastest-first, u32 type, u64 offset), padding to `general.alignment`
(default 32), then the tensor data; each tensor's offset is relative to the data start.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import attrs
from gguf import GGMLQuantizationType

from runtime.errors import ModelLoadError
from runtime.quants import BLOCK_SIZES

MAGIC = b"GGUF"
VERSION = 3
MAX_TENSORS = 1 << 16  # the largest public models have a few thousand
MAX_KV = 1 << 16
MAX_DIMS = 4
MAX_KEY_BYTES = 1 << 16
DEFAULT_ALIGNMENT = 32

# GGUF value types: id -> (struct format, size); 8 = string, 9 = array
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


@attrs.frozen
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # as stored: fastest-varying first
    qtype: GGMLQuantizationType
    offset: int  # absolute offset of the first byte in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (slowest first): a matrix is (rows, cols)."""
        return tuple(reversed(self.dims))


@attrs.frozen
class Header:
    version: int
    metadata: dict[str, Any]
    #: key -> (GGUF value type id, element type id for arrays else None), to copy files exactly
    value_types: dict[str, tuple[int, int | None]]
    tensors: list[TensorInfo]
    data_start: int
    file_size: int


class _Cursor:
    """Reads little-endian values from the mapped file, refusing to run past its end."""

    def __init__(self, buf: mmap.mmap, size: int):
        self.buf, self.size, self.pos = buf, size, 0
        self.what = "the file header"  # names the item being read, for error messages

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelLoadError(
                f"file is truncated or corrupt: reading {self.what} needs {n} bytes at offset "
                f"{self.pos}, but the file has {self.size} bytes"
            )

    def scalar(self, fmt: str, size: int) -> Any:
        self.need(size)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self) -> int:
        return self.scalar("<I", 4)

    def u64(self) -> int:
        return self.scalar("<Q", 8)

    def string(self, limit: int | None = None) -> str:
        n = self.u64()
        if limit is not None and n > limit:
            raise ModelLoadError(f"{self.what}: string length {n} exceeds the limit {limit}")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]  # mmap slices are bytes
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.what}: string is not valid UTF-8") from None

    def strings(self, count: int) -> list[str]:
        """`count` strings: `string()` unrolled, as vocabularies hold 150-260 K of them (the
        loop is most of a header's parse time); the same checks, the same errors."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out: list[str] = []
        append = out.append
        try:
            for _ in range(count):
                if pos + 8 > size:
                    break
                (n,) = unpack(buf, pos)
                end = pos + 8 + n
                if end > size:
                    break
                append(buf[pos + 8 : end].decode("utf-8"))
                pos = end
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.what}: string is not valid UTF-8") from None
        self.pos = pos
        if len(out) < count:  # stopped at the end of the file: string() says where, and raises
            self.string()
        return out

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth == 0:
            etype, count = self.u32(), self.u64()
            if etype in _SCALARS:
                fmt, size = _SCALARS[etype]
                self.need(count * size)  # checked before allocating anything
                out = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
                self.pos += count * size
                return out
            if etype == _STRING:
                self.need(count * 8)  # every string takes at least its 8-byte length
                return self.strings(count)
            raise ModelLoadError(f"{self.what}: unsupported array element type {etype}")
        raise ModelLoadError(f"{self.what}: unknown value type {vtype}")


def read_header(path: Path) -> Header:
    """Walk the header of `path`; ModelLoadError (naming the key or tensor) on any violation."""
    size = path.stat().st_size
    if size < 24:
        raise ModelLoadError(f"file is too short to be GGUF ({size} bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return _walk(_Cursor(m, size), size)


def _walk(c: _Cursor, size: int) -> Header:
    magic = bytes(c.buf[0:4])
    if magic != MAGIC:
        raise ModelLoadError(f"not a GGUF file: magic is {magic!r}, expected {MAGIC!r}")
    c.pos = 4
    version = c.u32()
    if version != VERSION:
        raise ModelLoadError(f"GGUF version {version} is not supported, expected {VERSION}")
    n_tensors, n_kv = c.u64(), c.u64()
    if not 0 < n_tensors <= MAX_TENSORS:
        raise ModelLoadError(f"tensor count {n_tensors} is not in 1..{MAX_TENSORS}")
    if n_kv > MAX_KV:
        raise ModelLoadError(f"metadata key count {n_kv} exceeds {MAX_KV}")

    metadata: dict[str, Any] = {}
    value_types: dict[str, tuple[int, int | None]] = {}
    for index in range(n_kv):
        c.what = f"metadata entry #{index}"
        key = c.string(MAX_KEY_BYTES)
        c.what = f"metadata key {key!r}"
        if key in metadata:
            raise ModelLoadError(f"metadata key {key!r} appears twice")
        vtype = c.u32()
        etype = None
        if vtype == _ARRAY:
            c.need(4)
            (etype,) = struct.unpack_from("<I", c.buf, c.pos)  # peeked: value() reads it again
        value_types[key] = (vtype, etype)
        metadata[key] = c.value(vtype)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelLoadError(f"general.alignment {alignment!r} is not a power of two")

    raw_infos = []
    for index in range(n_tensors):
        c.what = f"tensor info #{index}"
        name = c.string(MAX_KEY_BYTES)
        c.what = f"tensor {name!r}"
        n_dims = c.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelLoadError(f"tensor {name!r} has {n_dims} dimensions, expected 1..{MAX_DIMS}")
        dims = tuple(c.u64() for _ in range(n_dims))
        raw_type, offset = c.u32(), c.u64()
        raw_infos.append((name, dims, raw_type, offset))

    data_start = -(-c.pos // alignment) * alignment
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for name, dims, raw_type, offset in raw_infos:
        tensors.append(_tensor(name, dims, raw_type, offset, data_start, alignment, size))
        if name in seen:
            raise ModelLoadError(f"tensor {name!r} appears twice")
        seen.add(name)
    return Header(version, metadata, value_types, tensors, data_start, size)


def _tensor(name, dims, raw_type, offset, data_start, alignment, size) -> TensorInfo:
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        qtype = None
    if qtype not in BLOCK_SIZES:
        shown = qtype.name if qtype is not None else f"unknown type id {raw_type}"
        raise ModelLoadError(
            f"tensor {name!r} has type {shown}, which is not supported "
            f"(supported: {', '.join(t.name for t in BLOCK_SIZES)})"
        )
    if any(d <= 0 for d in dims):
        raise ModelLoadError(f"tensor {name!r} has dimensions {dims}, expected all positive")
    block, type_size = BLOCK_SIZES[qtype]
    if dims[0] % block:
        raise ModelLoadError(
            f"tensor {name!r}: row length {dims[0]} is not a multiple of the "
            f"{qtype.name} block size {block}"
        )
    n_values = 1
    for d in dims:
        n_values *= d
    nbytes = n_values // block * type_size
    if offset % alignment:
        raise ModelLoadError(f"tensor {name!r}: data offset {offset} is not {alignment}-aligned")
    start = data_start + offset
    if start + nbytes > size:
        raise ModelLoadError(
            f"tensor {name!r}: data at bytes {start}..{start + nbytes} lies beyond the end "
            f"of the file ({size} bytes); the file is truncated or corrupt"
        )
    return TensorInfo(name, dims, qtype, start, nbytes)
