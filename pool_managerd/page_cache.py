"""A file and the kernel's page cache: read it in, drop it, count what is resident.

Pure blocking functions (the model cache runs them on worker threads). Keeping a model "hot in
RAM" means its bytes sit in the page cache, so a worker's load (memory-mapped GGUF) copies from
RAM instead of waiting on the disk; it needs no copy of our own and survives the pool.

- `read_into_cache` reads the file once, sequentially, through one reused buffer;
- `drop_from_cache` asks the kernel to evict the file's clean pages (`POSIX_FADV_DONTNEED`):
  the cold case of the benchmark, without root (dropping every cache needs root);
- `resident_bytes` asks `mincore(2)` which pages of a mapping of the file are in memory
  (Python's `mmap` gives no address to pass it, so the mapping is made through libc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

CHUNK_BYTES = 8 << 20
_PROT_READ, _MAP_SHARED = 0x1, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(b & 1 for b in range(256))


def read_into_cache(
    path: Path, progress: Callable[[int, int], None] | None = None, chunk: int = CHUNK_BYTES
) -> int:
    """Read all of `path` (so its pages are cached); `progress(done, total)`; returns bytes."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    try:
        total = os.fstat(fd).st_size
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger read-ahead
        done = 0
        if progress is not None:
            progress(0, total)
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                break
            done += n
            if progress is not None:
                progress(done, total)
        return done
    finally:
        os.close(fd)


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_bytes(path: Path) -> tuple[int, int]:
    """(bytes of `path` in the page cache, file size), page-granular, via mincore(2)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        libc = _libc()
        page = os.sysconf("SC_PAGE_SIZE")
        pages = (size + page - 1) // page
        addr = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap failed", str(path))
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", str(path))
            in_core = bytes(vec).translate(_LOW_BIT).count(1)  # bit 0: page resident
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(size, in_core * page), size
