"""Our own disk cache of compiled kernels (cubins), so a warm start never runs nvcc.

PyCUDA has a disk cache too, but its key is the *preprocessed* source: every module with an
`#include` runs `nvcc --preprocess` first (~0.11 s each on the H100 host, ~15 modules per load).
Here the key is computed in Python from what decides the cubin:

- the raw .cu text and every shared header (`*.cuh`) of the kernel folder (name + bytes): our
  kernels include nothing else of ours, so an edited header changes every key, which is cheap
  and always right;
- the nvcc options (incl. `-D` defines) and the target arch (`sm_90`);
- the toolchain: nvcc's resolved path, size and mtime (no subprocess), the CUDA driver version
  and PyCUDA's version (it wraps sources in `extern "C"` and adds its include dir).

Files are `<key>.cubin` holding a magic, the payload's sha256 and the payload; a file that does
not verify (truncated, corrupted, another format) is ignored and overwritten by a fresh build.
Writes are atomic (temporary file in the same folder + os.replace), so concurrent workers never
read half a file. The folder is $WORKER_ORCD_KERNEL_CACHE, else $XDG_CACHE_HOME/worker-orcd/kernels,
else ~/.cache/worker-orcd/kernels. An unwritable folder only costs the store.

Pure Python (hashlib, os): importable and testable without PyCUDA or a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: bump when the key's recipe or the file layout changes
FORMAT = b"worker-orcd-cubin-v1\n"
_DIGEST = 32  # sha256 bytes after the magic


def cache_dir() -> Path:
    """The kernel cache folder (not created here)."""
    override = os.environ.get("WORKER_ORCD_KERNEL_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "worker-orcd" / "kernels"


def headers(kernel_dir: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every shared header in the kernel folder, sorted by name."""
    return [(p.name, p.read_bytes()) for p in sorted(kernel_dir.glob("*.cuh"))]


def toolchain_id(nvcc: str | None, driver_version: object, extra: str = "") -> str:
    """A cheap identity of the compiler: nvcc's real path + size + mtime, driver version, extra."""
    parts = [f"driver={driver_version}", extra]
    if nvcc is None:
        parts.append("nvcc=missing")
    else:
        real = os.path.realpath(nvcc)
        try:
            st = os.stat(real)
            parts.append(f"nvcc={real}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"nvcc={real}:unreadable")
    return "|".join(parts)


def cache_key(
    source: str,
    header_files: Sequence[tuple[str, bytes]],
    options: Sequence[str],
    arch: str,
    toolchain: str,
) -> str:
    """Hex sha256 over everything that decides the cubin (fields length-prefixed, unambiguous)."""
    h = hashlib.sha256(FORMAT)

    def field(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    field(source.encode())
    field(str(len(header_files)).encode())
    for name, data in header_files:
        field(name.encode())
        field(data)
    field("\0".join(options).encode())
    field(arch.encode())
    field(toolchain.encode())
    return h.hexdigest()


def read(path: Path) -> bytes | None:
    """The cubin stored at `path`, or None when it is missing or does not verify."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(FORMAT)
    payload = blob[head + _DIGEST :]
    if (
        blob[:head] != FORMAT
        or not payload
        or hashlib.sha256(payload).digest() != blob[head : head + _DIGEST]
    ):
        log.warning("kernel cache: ignoring invalid file %s", path)
        return None
    return payload


def write(path: Path, cubin: bytes) -> None:
    """Store atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(FORMAT + hashlib.sha256(cubin).digest() + cubin)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached(directory: Path, key: str, build: Callable[[], bytes]) -> bytes:
    """The cubin for `key`: from `directory` when a valid file is there, else `build()` + store."""
    path = directory / f"{key}.cubin"
    cubin = read(path)
    if cubin is not None:
        return cubin
    cubin = build()
    try:
        write(path, cubin)
    except OSError as exc:  # read-only home, full disk: run anyway, compile again next time
        log.warning("kernel cache: could not store %s: %s", path, exc)
    return cubin
