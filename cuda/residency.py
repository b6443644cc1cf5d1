"""Ask the driver whether the ledger's memory is still device memory where we put it.

PyCUDA has the pointer-attribute enum but no call that queries it, so `cuPointerGetAttribute`
is reached through ctypes on libcuda. For each ledger entry: memory type must be DEVICE, the
device ordinal the engine's, the pointer not managed, and the driver's allocation range must
start at the pointer and cover the entry's size. Then the ledger total is reconciled with
`mem_get_info` (it cannot exceed what the device reports used), and a checksum kernel over a
sample window of every weight is compared with the value computed from the file's bytes at
load, so a weight overwritten in place is caught too.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from cuda.ledger import Entry
from runtime.engine_api import ResidencyReport

# CUpointer_attribute values (cuda.h)
_ATTR_MEMORY_TYPE = 2
_ATTR_IS_MANAGED = 8
_ATTR_DEVICE_ORDINAL = 9
_ATTR_RANGE_START_ADDR = 11
_ATTR_RANGE_SIZE = 12
_MEMORYTYPE_DEVICE = 2

#: bytes of each weight the checksum covers (a window in the middle of the tensor)
CHECKSUM_WINDOW = 64 * 1024

_libcuda: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libcuda
    if _libcuda is None:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuPointerGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
        lib.cuPointerGetAttribute.restype = ctypes.c_int
        _libcuda = lib
    return _libcuda


def pointer_attribute(ptr: int, attribute: int, ctype: type = ctypes.c_uint) -> int | None:
    """The attribute's value, or None when the driver refuses (e.g. not an allocation)."""
    value = ctype(0)
    status = _lib().cuPointerGetAttribute(ctypes.byref(value), attribute, ctypes.c_uint64(ptr))
    return None if status != 0 else int(value.value)


def check_entry(entry: Entry, device_ordinal: int) -> str | None:
    """None when the entry is device memory on `device_ordinal` covering its size; else why not."""
    kind = pointer_attribute(entry.ptr, _ATTR_MEMORY_TYPE)
    if kind != _MEMORYTYPE_DEVICE:
        return f"{entry.name} at {entry.ptr:#x} is not device memory (type {kind})"
    if pointer_attribute(entry.ptr, _ATTR_IS_MANAGED):
        return f"{entry.name} at {entry.ptr:#x} is managed memory"
    ordinal = pointer_attribute(entry.ptr, _ATTR_DEVICE_ORDINAL, ctypes.c_int)
    if ordinal != device_ordinal:
        return f"{entry.name} is on device {ordinal}, expected {device_ordinal}"
    start = pointer_attribute(entry.ptr, _ATTR_RANGE_START_ADDR, ctypes.c_uint64)
    size = pointer_attribute(entry.ptr, _ATTR_RANGE_SIZE, ctypes.c_size_t)
    if start is None or size is None or start + size < entry.ptr + entry.nbytes:
        return f"{entry.name}: the driver's allocation range does not cover {entry.nbytes} bytes"
    return None


def window(nbytes: int) -> tuple[int, int]:
    """(offset, length) of the checksum window of a tensor of `nbytes`, 4-byte aligned."""
    length = min(CHECKSUM_WINDOW, nbytes) & ~3
    offset = ((nbytes - length) // 2) & ~3
    return offset, length


def host_checksum(data: np.ndarray) -> int:
    """sum_i word_i * (2 i + 1) mod 2**64 over the little-endian 32-bit words of `data` (uint8);
    the same function as the checksum_words kernel."""
    words = np.ascontiguousarray(data).view("<u4").astype(np.uint64)
    weights = np.arange(words.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(words * weights, dtype=np.uint64))


def window_checksum(data: np.ndarray) -> int | None:
    """The checksum of the window of an allocation holding exactly `data` (None: too small)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    off, length = window(flat.size)
    return host_checksum(flat[off : off + length]) if length else None


def run_check(
    entries: Iterable[Entry],
    *,
    device_ordinal: int,
    mem_get_info: Callable[[], tuple[int, int]],
    checksums: dict[str, int],
    device_checksums: Callable[[list[Entry]], list[int]],
) -> ResidencyReport:
    """The whole residency check; `checksums` maps weight names to their load-time value."""
    entries = list(entries)
    if not entries:
        return ResidencyReport(False, 0, "the ledger is empty: no model is resident")
    checked = 0
    for entry in entries:
        problem = check_entry(entry, device_ordinal)
        if problem is not None:
            return ResidencyReport(False, checked, problem)
        checked += entry.nbytes
    free, total = mem_get_info()
    used = total - free
    if checked > used:
        return ResidencyReport(
            False, checked, f"ledger holds {checked} bytes but the device reports {used} used"
        )
    summed = [e for e in entries if e.name in checksums]
    for entry, value in zip(summed, device_checksums(summed), strict=True):
        if value != checksums[entry.name]:
            return ResidencyReport(False, checked, f"{entry.name} changed in VRAM (checksum)")
    return ResidencyReport(
        True,
        checked,
        f"{len(entries)} allocations ({checked} bytes) are device memory on device "
        f"{device_ordinal}; {used} bytes used on the device; {len(checksums)} weight "
        "checksums match",
    )


class Checker:
    """The engine's residency check (`run`): its ledger, the load-time checksums, and the
    `n_slots` uint64 checksum slots it allocates in VRAM at load (a check allocates nothing)."""

    def __init__(self, drv, ops, stream, ledger, device: int, checksums: dict, n_slots: int):
        self._drv, self._ops, self._stream, self._ledger = drv, ops, stream, ledger
        self._device, self._checksums, self._n_slots = device, checksums, n_slots
        self._slots = ledger.alloc("scratch.checksums", 8 * n_slots)

    def run(self) -> ResidencyReport:
        self._stream.synchronize()
        return run_check(
            self._ledger.entries(),
            device_ordinal=self._device,
            mem_get_info=self._drv.mem_get_info,
            checksums=self._checksums,
            device_checksums=lambda entries: device_checksums(
                self._drv, self._ops, self._stream, self._slots, self._n_slots, entries
            ),
        )


def device_checksums(
    drv: Any, ops: Any, stream: Any, slots_ptr: int, n_slots: int, entries: list[Entry]
) -> list[int]:
    """The checksum window of each entry, computed on the device, `n_slots` at a time.

    slots_ptr: (n_slots,) uint64 in VRAM, allocated at load (a check allocates nothing).
    """
    values: list[int] = []
    for first in range(0, len(entries), n_slots):
        batch = entries[first : first + n_slots]
        drv.memset_d8(slots_ptr, 0, 8 * len(batch))
        for i, entry in enumerate(batch):
            off, length = window(entry.nbytes)
            ops.checksum(entry.ptr + off, length // 4, slots_ptr + 8 * i, stream)
        out = np.zeros(len(batch), np.uint64)
        drv.memcpy_dtoh_async(out, slots_ptr, stream)
        stream.synchronize()
        values += [int(v) for v in out]
    return values
