"""REL-9: signals and start-up of the real `python -m worker_orcd` process.

Before: a SIGTERM in the first second (the imports) exited -15 with no log line; SIGHUP killed
without a drain or a line; a directory, FIFO or symlink loop as `--model` said "no such model
file" (after "Listening"); a busy port was narrated as "An actor crashed".
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from runtime.errors import ModelLoadError
from tests.test_cli_worker import Proc, cli, free_port
from worker_orcd.preflight import check_model_file

pytestmark = pytest.mark.slow
EXIT_S = 60.0  # the process ends this soon after the signal (generous: a loaded 2-core CI)


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (the SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask.split()[1], 16) >> (signum - 1) & 1)


def finish(proc: Proc) -> int:
    try:
        return proc.proc.wait(timeout=EXIT_S)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=10)


def actions(proc: Proc) -> list[str]:
    return [e.get("action") for e in proc.narration()]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_right_after_start_is_a_narrated_clean_exit(tmp_path):
    port = free_port()
    proc = Proc(cli(port), port, tmp_path / "worker.log")
    deadline = time.monotonic() + 30
    while not catches(proc.proc.pid, signal.SIGTERM):  # the first instant it can be caught
        assert proc.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    proc.proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 0, proc.log.read_text()[-3000:]
    events = proc.narration()
    (signalled,) = [e for e in events if e["action"] == "signal"]
    assert signalled["signal"] == "SIGTERM" and "during start-up" in signalled["human"]
    assert events[-1]["action"] == "shutdown" and events[-1]["exit_code"] == 0


def test_sighup_drains_and_exits_cleanly(tmp_path):
    port = free_port()
    proc = Proc(cli(port, "--max-context", "256"), port, tmp_path / "worker.log")
    proc.wait_ready()
    proc.proc.send_signal(signal.SIGHUP)
    assert finish(proc) == 0, proc.log.read_text()[-3000:]
    events = proc.narration()
    (signalled,) = [e for e in events if e["action"] == "signal"]
    assert signalled["signal"] == "SIGHUP"
    assert "shutdown" in actions(proc) and events[-1]["exit_code"] == 0


def _directory(tmp: Path) -> Path:
    return tmp


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "model.gguf")
    return tmp / "model.gguf"


def _loop(tmp: Path) -> Path:
    (tmp / "a.gguf").symlink_to(tmp / "b.gguf")
    (tmp / "b.gguf").symlink_to(tmp / "a.gguf")
    return tmp / "a.gguf"


def _dangling(tmp: Path) -> Path:
    (tmp / "a.gguf").symlink_to(tmp / "gone.gguf")
    return tmp / "a.gguf"


def _missing(tmp: Path) -> Path:
    return tmp / "missing.gguf"


CASES = [
    (_directory, "it is a directory, not a GGUF file"),
    (_fifo, "it is a FIFO, not a GGUF file"),
    (_loop, "it is a symlink loop"),
    (_dangling, "it is a symlink to a file that does not exist"),
    (_missing, "no such file"),
]


@pytest.mark.parametrize(("make", "why"), CASES)
def test_each_kind_of_non_file_has_its_own_message(tmp_path, make, why):
    model = make(tmp_path)
    with pytest.raises(ModelLoadError) as refused:
        check_model_file(model)
    assert refused.value.message == f"cannot use {model} as the model: {why}"
    assert refused.value.field == "model"


def test_a_fifo_as_the_model_is_named_before_listening_and_never_opened(tmp_path):
    """The whole process: one line, exit 1 (opening the FIFO would block for ever)."""
    model = _fifo(tmp_path)
    port = free_port()
    proc = Proc(cli(port, "--model", str(model)), port, tmp_path / "worker.log")
    assert finish(proc) == 1
    events = proc.narration()
    assert [e["action"] for e in events] == ["error"], events
    assert events[0]["human"] == f"Cannot start: cannot use {model} as the model: {CASES[1][1]}"
    assert events[0]["code"] == "MODEL_LOAD_FAILED"


def test_a_busy_port_is_a_clear_start_failure_not_a_crash(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Proc(cli(port), port, tmp_path / "worker.log")
        assert finish(proc) == 1
    text = proc.log.read_text()
    assert "An actor crashed" not in text and "listening" not in actions(proc)
    last = proc.narration()[-1]
    assert (
        last["human"] == f"Cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
