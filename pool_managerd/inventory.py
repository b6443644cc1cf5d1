"""The GPU inventory: the devices this pool hands out, with live total / used / free memory.

NVML (`nvidia-ml-py`) lists the NVIDIA GPUs and reads their memory and the processes on them.
Where NVML finds no GPU (no driver, no library, a CI machine) or the pool runs cpu workers,
the pool offers one device `cpu` whose memory is the host's (`/proc/meminfo`: MemTotal and
MemAvailable), so that every part of the pool runs, and is tested, with real worker processes.

Readings are live (one NVML call, or one read of /proc/meminfo, a few microseconds), never cached:
preflight and `/v2/state` must see a worker that just died give its memory back.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

CPU_DEVICE = "cpu"
MEMINFO = Path("/proc/meminfo")


@attrs.frozen
class Memory:
    total: int
    used: int
    free: int


@attrs.frozen
class Device:
    id: int | str  # the NVML index (also the CUDA ordinal the worker gets), or "cpu"
    kind: str  # "cuda" | "cpu": the backend its workers run
    name: str
    uuid: str | None = None

    @property
    def ordinal(self) -> int:
        """What the worker's `--gpu-device` gets (0 for the cpu device, where it is unused)."""
        return self.id if isinstance(self.id, int) else 0


class NvmlUnavailable(Exception):
    """NVML cannot be used here: no library, no driver or no GPU."""


def host_memory() -> Memory:
    """The host's memory: MemTotal, and MemAvailable as free (what can be had without swapping)."""
    fields: dict[str, int] = {}
    try:
        for line in MEMINFO.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    page = os.sysconf("SC_PAGE_SIZE")
    total = fields.get("MemTotal") or os.sysconf("SC_PHYS_PAGES") * page
    free = fields.get("MemAvailable") or os.sysconf("SC_AVPHYS_PAGES") * page
    return Memory(total=total, used=max(0, total - free), free=free)


class Inventory:
    """The devices of this host for one backend; `memory(device)` reads it now."""

    def __init__(self, devices: list[Device], nvml=None):
        self.devices = {d.id: d for d in devices}
        self._nvml = nvml  # the pynvml module once initialised, for GPU devices
        self._handles = {}

    @classmethod
    def discover(cls, backend: str) -> Inventory:
        """GPUs through NVML for `cuda`/`auto`; the cpu device for `cpu` or `auto` without GPUs.

        `cuda` without a usable NVML raises NvmlUnavailable (the pool refuses to start rather
        than hand out devices it cannot see).
        """
        if backend == "cpu":
            return cls.cpu()
        try:
            return cls.nvml()
        except NvmlUnavailable:
            if backend == "cuda":
                raise
            return cls.cpu()

    @classmethod
    def cpu(cls) -> Inventory:
        return cls([Device(CPU_DEVICE, "cpu", f"host memory ({os.cpu_count()} cores)")])

    @classmethod
    def nvml(cls) -> Inventory:
        import pynvml  # from nvidia-ml-py

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlUnavailable(f"NVML: {error}") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                raise NvmlUnavailable("NVML: no GPU")
            devices = []
            for index in range(count):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                devices.append(
                    Device(
                        index,
                        "cuda",
                        _text(pynvml.nvmlDeviceGetName(handle)),
                        _text(pynvml.nvmlDeviceGetUUID(handle)),
                    )
                )
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        return cls(devices, nvml=pynvml)

    @property
    def backend(self) -> str:
        return "cuda" if self._nvml is not None else "cpu"

    def find(self, device_id: object) -> Device | None:
        if isinstance(device_id, bool) or not isinstance(device_id, int | str):
            return None  # JSON true is not device 1
        return self.devices.get(device_id)

    def memory(self, device: Device) -> Memory:
        if device.kind == "cpu":
            return host_memory()
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle(device))
        return Memory(total=int(info.total), used=int(info.used), free=int(info.free))

    def process_memory(self, device: Device) -> dict[int, int]:
        """pid -> bytes of device memory NVML attributes to it (empty for the cpu device)."""
        if device.kind == "cpu":
            return {}
        nvml = self._nvml
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(device))
        except nvml.NVMLError:
            return {}
        return {int(p.pid): int(p.usedGpuMemory or 0) for p in procs}

    def _handle(self, device: Device):
        handle = self._handles.get(device.id)
        if handle is None:
            handle = self._handles[device.id] = self._nvml.nvmlDeviceGetHandleByIndex(device.id)
        return handle

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
