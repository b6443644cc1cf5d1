"""`pool-managerd`'s exit statuses for what stops it from starting."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from pool_managerd.inventory import Inventory, NvmlUnavailable
from tests.e2e.conftest import REPO_ROOT


def run_pool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pool_managerd", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "99999"),
        ("--health-interval", "0"),
        ("--pool-id", "a b"),
        ("--backend", "x"),
        ("--max-batch", "0"),
        ("--max-batch", "65"),
    ],
)
def test_bad_flags_exit_2(args):
    done = run_pool(*args)
    assert done.returncode == 2, done.stderr
    assert "pool-managerd" in done.stderr
    assert "Attribute(" not in done.stderr  # the flag's own sentence, not the validator's repr


def test_cuda_without_a_gpu_exits_1():
    try:
        Inventory.nvml().close()
        pytest.skip("this host has a GPU")
    except NvmlUnavailable:
        pass
    done = run_pool("--backend", "cuda", "--port", "0")
    assert done.returncode == 1 and "no GPU is usable" in done.stderr


def test_a_port_in_use_exits_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_pool("--backend", "cpu", "--port", str(taken.getsockname()[1]))
    assert done.returncode == 1, done.stderr
    assert "crash" in done.stderr
