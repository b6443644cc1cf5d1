"""Worker processes: the command line, the spawn, the output relay and the stop escalation.

`worker_command` is the one place that knows how a worker is started: `sys.executable -m
worker_module()` with the worker's flags (so a pool in a virtual environment starts workers from
the same one). Every worker runs in its own session (a Ctrl-C on the pool's terminal reaches
the pool only, which then stops its workers in order) and gets SIGTERM from the kernel if the
pool dies without stopping it (`PR_SET_PDEATHSIG`), so a pool killed with SIGKILL does not
leave workers holding GPU memory.

A stop escalates (`stop_process`): `POST /shutdown` (the worker drains and exits 0), after
`grace_s` SIGTERM (the worker drains the same way), after `kill_after_s` SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

#: The worker's entry module: the service layer (branch svc) moves it from `runtime.cli` to
#: `worker_orcd`; until that lands on main both are looked for (`worker_module`).
WORKER_MODULE = "worker_orcd"  # `python -m worker_orcd`: the worker's own entry point
MAX_LINE_BYTES = 64 * 1024  # a longer line (no newline in sight) is cut, never buffered forever
SHUTDOWN_REQUEST_TIMEOUT_S = 2.0
_PR_SET_PDEATHSIG = 1


def worker_module() -> str:
    """The module a worker process runs (`python -m ...`)."""
    return WORKER_MODULE


def worker_command(
    *,
    worker_id: str,
    model_path: Path,
    model_ref: str,
    backend: str,
    gpu_device: int,
    max_context: int,
    max_batch: int,
    host: str,
    callback_url: str,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        worker_module(),
        "--worker-id",
        worker_id,
        "--model",
        str(model_path),
        "--model-ref",
        model_ref,
        "--backend",
        backend,
        "--gpu-device",
        str(gpu_device),
        "--max-context",
        str(max_context),
        "--max-batch",
        str(max_batch),
        "--host",
        host,
        "--port",
        "0",  # the worker binds a free port and says which in its ready callback (`uri`)
        "--callback-url",
        callback_url,
    ]


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the pool goes away (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl  # before the fork
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the pool died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class WorkerProcess:
    """A spawned worker: its pid, its output as a trio stream, its exit awaited through a pidfd."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self.pid = popen.pid
        self.stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        popen.stdout.close()
        self._pidfd = os.pidfd_open(popen.pid)
        self.returncode: int | None = None

    async def wait(self) -> int:
        """The exit status (negative: the signal), once the process has exited (reaped here)."""
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)  # readable once the child exited
            self.returncode = self._popen.wait()
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self._popen.send_signal(signum)


def spawn(cmd: list[str], *, cwd: Path | None = None) -> WorkerProcess:
    """Start `cmd` with stdout and stderr on one pipe (read it with `relay_lines`).

    Synchronous, on the trio thread, on purpose: `PR_SET_PDEATHSIG` fires when the *thread*
    that forked the child exits, and `trio.lowlevel.open_process` forks from a cached worker
    thread that exits after 10 s idle, which SIGTERMed every worker 10 s after its start
    (found by the haiku test through the pool). The trio thread lives as long as the pool; the
    fork and exec take a few milliseconds.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent_hook(),
    )
    try:
        return WorkerProcess(popen)
    except OSError:
        popen.kill()
        popen.wait()
        raise


async def relay_lines(stream: trio.abc.ReceiveStream, on_line: Callable[[str], None]) -> None:
    """Call `on_line` for each line of `stream` (without its newline) until EOF."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            on_line(line[:MAX_LINE_BYTES].decode("utf-8", errors="replace"))
        if len(pending) > MAX_LINE_BYTES:
            on_line(pending[:MAX_LINE_BYTES].decode("utf-8", errors="replace"))
            pending = b""
    if pending:
        on_line(pending.decode("utf-8", errors="replace"))


async def stop_process(
    proc: WorkerProcess,
    exited: trio.Event,
    *,
    client: httpx.AsyncClient,
    shutdown_url: str | None,
    grace_s: float,
    kill_after_s: float,
    on_step: Callable[[str], Awaitable[None] | None],
) -> None:
    """Escalate until `exited` is set; `on_step(step)` before each: shutdown, SIGTERM, SIGKILL.

    Without a URL (a worker that never called back) or when `/shutdown` is not accepted (no
    answer, refused, not 202), the escalation starts at SIGTERM.
    """
    if exited.is_set():
        return
    if shutdown_url is not None:
        await _call(on_step, "shutdown")
        if await _post_shutdown(client, shutdown_url, min(grace_s, SHUTDOWN_REQUEST_TIMEOUT_S)):
            with trio.move_on_after(grace_s):
                await exited.wait()
                return
    for step, signum, wait_s in (
        ("SIGTERM", signal.SIGTERM, kill_after_s),
        ("SIGKILL", signal.SIGKILL, None),
    ):
        if exited.is_set():
            return
        await _call(on_step, step)
        _signal(proc, signum)
        if wait_s is None:
            await exited.wait()
            return
        with trio.move_on_after(wait_s):
            await exited.wait()
            return


async def _post_shutdown(client: httpx.AsyncClient, url: str, timeout_s: float) -> bool:
    try:
        response = await client.post(url, json={}, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 202


def _signal(proc: WorkerProcess, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone: its exit is on the way to the watcher
        proc.send_signal(signum)


async def _call(fn: Callable[[str], Awaitable[None] | None], step: str) -> None:
    result = fn(step)
    if result is not None:
        await result
