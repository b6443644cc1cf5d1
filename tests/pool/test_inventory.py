"""The GPU inventory: NVML where a GPU is, else one `cpu` device with the host's memory.

The cpu figures are checked against independent readings (`sysconf`, `free`); on a GPU host the
NVML figures against `nvidia-smi`'s (run there: see specs/requirements-pool.md, POOL-INV-3).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pool_managerd.inventory import CPU_DEVICE, Inventory, NvmlUnavailable


def nvml_works() -> bool:
    try:
        Inventory.nvml().close()
    except NvmlUnavailable:
        return False
    return True


@pytest.mark.skipif(nvml_works(), reason="this host has a GPU: the cpu fallback is not offered")
def test_without_nvml_the_pool_offers_the_cpu_device():
    inventory = Inventory.discover("auto")
    assert list(inventory.devices) == [CPU_DEVICE] and inventory.backend == "cpu"
    with pytest.raises(NvmlUnavailable):
        Inventory.discover("cuda")  # asked for GPUs and none usable: refuse, don't pretend


def test_cpu_device_memory_is_the_hosts():
    inventory = Inventory.discover("cpu")
    memory = inventory.memory(inventory.devices[CPU_DEVICE])
    page = os.sysconf("SC_PAGE_SIZE")
    assert memory.total == os.sysconf("SC_PHYS_PAGES") * page
    free = subprocess.run(["free", "-b"], capture_output=True, text=True, check=True, timeout=10)
    available = int(free.stdout.splitlines()[1].split()[6])  # the "available" column
    assert abs(memory.free - available) < 0.05 * memory.total
    assert memory.used == memory.total - memory.free
    assert inventory.process_memory(inventory.devices[CPU_DEVICE]) == {}
    assert inventory.find(True) is None and inventory.find("cpu") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not nvml_works() or not shutil.which("nvidia-smi"), reason="needs a GPU")
def test_nvml_figures_match_nvidia_smi():
    inventory = Inventory.discover("cuda")
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total,uuid", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        rows = [line.split(", ") for line in out.strip().splitlines()]
        assert sorted(inventory.devices) == [int(r[0]) for r in rows]
        for index, total_mib, uuid in rows:
            device = inventory.devices[int(index)]
            memory = inventory.memory(device)
            assert memory.total // (1 << 20) == int(total_mib) and device.uuid == uuid
            assert 0 <= memory.used <= memory.total and memory.free <= memory.total
            print(f"GPU {index} {device.name}: total {memory.total} used {memory.used} "
                  f"free {memory.free}")  # fmt: skip
    finally:
        inventory.close()
