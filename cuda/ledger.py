"""Every device allocation of the engine, by name: the ledger that memory accounting and the
residency check read.

`Ledger.alloc(name, nbytes)` is the only way the engine takes VRAM (plain `cuMemAlloc` through
PyCUDA: no managed, mapped or pinned memory for model state). Each entry keeps its name, device
pointer, size and *scope*: "model" entries live from load to close; "job" entries belong to the
running job and are dropped together (`free_scope("job")`) when the job ends or fails.

Failures are uniform: a real out-of-memory (`pycuda.driver.MemoryError`), the `cap_bytes` limit
(the worker's --max-vram-bytes) and the test fault switch (`fail_next_allocation`) all raise
`AllocationFailed` with the request and the ledger total in the message; the engine turns it into
INSUFFICIENT_VRAM at load and VRAM_OOM during a job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs


class AllocationFailed(Exception):
    """A device allocation could not be made (out of memory, over the cap, or injected)."""


@attrs.frozen
class Entry:
    name: str
    ptr: int  # device address
    nbytes: int
    scope: str  # "model" | "job"


class Ledger:
    def __init__(self, drv: Any, *, cap_bytes: int | None = None):
        self._drv = drv  # pycuda.driver, passed in so this module imports without PyCUDA
        self.cap_bytes = cap_bytes
        self._entries: dict[str, tuple[Entry, Any]] = {}  # name -> (entry, DeviceAllocation)
        self._fail_next = False

    def fail_next_allocation(self) -> None:
        """Make the next `alloc` fail as if the device were out of memory (for tests)."""
        self._fail_next = True

    def alloc(self, name: str, nbytes: int, *, scope: str = "model", zero: bool = False) -> int:
        """Allocate `nbytes` (>= 1) of device memory under a unique `name`; returns the pointer."""
        if name in self._entries:
            raise ValueError(f"ledger entry {name!r} exists already")
        nbytes = max(int(nbytes), 1)
        if self._fail_next:
            self._fail_next = False
            raise AllocationFailed(
                f"allocation of {nbytes} bytes for {name} failed (injected fault); "
                f"ledger holds {self.total()} bytes"
            )
        if self.cap_bytes is not None and self.total() + nbytes > self.cap_bytes:
            raise AllocationFailed(
                f"allocation of {nbytes} bytes for {name} would exceed the VRAM cap of "
                f"{self.cap_bytes} bytes (ledger holds {self.total()} bytes)"
            )
        try:
            mem = self._drv.mem_alloc(nbytes)
        except self._drv.MemoryError as exc:
            free, _ = self._drv.mem_get_info()
            raise AllocationFailed(
                f"allocation of {nbytes} bytes for {name} failed: {exc} "
                f"(device reports {free} bytes free; ledger holds {self.total()} bytes)"
            ) from exc
        ptr = int(mem)
        if zero:
            self._drv.memset_d8(ptr, 0, nbytes)
        self._entries[name] = (Entry(name, ptr, nbytes, scope), mem)
        return ptr

    def free(self, name: str) -> None:
        """Forget the entry and free its memory (the entry goes even if the free fails)."""
        entry_mem = self._entries.pop(name, None)
        if entry_mem is not None:
            entry_mem[1].free()

    def free_scope(self, scope: str) -> int:
        """Free every entry of `scope`; returns the bytes released."""
        names = [n for n, (e, _) in self._entries.items() if e.scope == scope]
        released = sum(self._entries[n][0].nbytes for n in names)
        for n in names:
            self.free(n)
        return released

    def free_all(self) -> None:
        for name in list(self._entries):
            self.free(name)

    def has(self, name: str) -> bool:
        return name in self._entries

    def ptr(self, name: str) -> int:
        return self._entries[name][0].ptr

    def entries(self) -> Iterator[Entry]:
        for entry, _ in self._entries.values():
            yield entry

    def total(self, scope: str | None = None) -> int:
        return sum(e.nbytes for e, _ in self._entries.values() if scope in (None, e.scope))

    def __len__(self) -> int:
        return len(self._entries)
