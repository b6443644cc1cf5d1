"""A real `pool-managerd` process for the tests, and helpers to drive it over HTTP.

`start_pool(...)` runs `python -m pool_managerd` on a free port with the lifecycle's time limits
shrunk by flags (the defaults are minutes; CI has 2 cores and a budget), waits for its `/health`,
and on exit stops it with SIGTERM, killing it only if it overstays. `WORKER_ORCD_TEST_BACKEND`
(default `cpu`) picks the backend of its workers and the device they go on (`cpu`, or GPU 0);
`WORKER_ORCD_TEST_MODEL` a GGUF file to serve instead of the catalog's `smollm2-135m`.

Every wait is bounded; a timeout says what the pool last reported and the tail of its log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from pool_managerd.spawner import worker_module
from tests.e2e.conftest import (
    REPO_ROOT,
    SSEParser,
    WorkerProcess,
    free_port,
    selected_backend,
    selected_model,
)

#: Flags that make the lifecycle fast enough for CI (see the POOL-* requirements for defaults).
FAST_FLAGS = (
    "--health-interval", "0.5", "--health-timeout", "0.5", "--health-misses", "3",
    "--shutdown-grace", "5", "--kill-after", "2", "--ready-timeout", "60",
)  # fmt: skip
POOL_START_TIMEOUT_S = 30.0
POOL_STOP_TIMEOUT_S = 30.0
WORKER_READY_TIMEOUT_S = 90.0  # two workers loading at once on 2 cores


@functools.cache
def worker_calls_back() -> bool:
    """Whether the worker here has the service layer's `--callback-url` (and POST /shutdown)."""
    out = subprocess.run(
        [sys.executable, "-m", worker_module(), "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "--callback-url" in out.stdout


#: For tests that need a worker to reach `ready`: it says so only through its ready callback.
needs_callback = pytest.mark.skipif(
    not worker_calls_back(),
    reason="needs the worker's ready callback and POST /shutdown: the service layer "
    "(branch svc), not merged into this branch yet",
)


def pool_model_ref() -> str:
    model = selected_model()
    return f"file:{Path(model).resolve()}" if model else "smollm2-135m"


def pool_device() -> int | str:
    return 0 if selected_backend() == "cuda" else "cpu"


@attrs.define
class PoolProcess:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    client: httpx.Client
    returncode: int | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    #: The JSON objects of the log (the pool's events and its workers'), parsed as the e2e
    #: helper parses a worker's log (it needs only `log_text`).
    log_events = WorkerProcess.narration

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def state(self) -> dict:
        return self.client.get("/v2/state").json()

    def worker(self, worker_id: str) -> dict:
        for w in self.state()["workers"]:
            if w["id"] == worker_id:
                return w
        raise KeyError(worker_id)

    def post(self, path: str, body: object) -> httpx.Response:
        return self.client.post(path, json=body)

    def start_worker(self, model_ref: str | None = None, gpu_id: object = None, **extra) -> dict:
        """POST /v2/workers/start, expecting 202; returns the body."""
        body = {"model_ref": model_ref or pool_model_ref(), "gpu_id": gpu_id, **extra}
        if body["gpu_id"] is None:
            body["gpu_id"] = pool_device()
        response = self.post("/v2/workers/start", body)
        assert response.status_code == 202, (response.status_code, response.text, self.tail())
        return response.json()

    def wait_status(
        self, worker_id: str, statuses: set[str] | str, timeout_s: float = WORKER_READY_TIMEOUT_S
    ) -> dict:
        """Poll /v2/state until the worker's status is in `statuses`; returns its record."""
        wanted = {statuses} if isinstance(statuses, str) else statuses
        deadline = time.monotonic() + timeout_s
        record: dict = {}
        while time.monotonic() < deadline:
            record = self.worker(worker_id)
            if record["status"] in wanted:
                return record
            time.sleep(0.1)
        raise TimeoutError(
            f"worker {worker_id} not {wanted} within {timeout_s} s: {record}\n{self.tail()}"
        )

    def wait_exit_code(self, worker_id: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.worker(worker_id)
            if record["exit_code"] is not None:
                return record
            time.sleep(0.1)
        raise TimeoutError(f"worker {worker_id} still running after {timeout_s} s\n{self.tail()}")

    def wait_narration(self, worker_id: str, action: str, timeout_s: float = 30.0) -> dict:
        """The first event `action` the worker narrated (relayed into the pool's log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.log_events():
                if event.get("worker_id") == worker_id and event.get("action") == action:
                    return event
            time.sleep(0.02)
        raise TimeoutError(f"worker {worker_id} did not narrate {action}:\n{self.tail()}")

    def freeze_at_load(self, started: dict) -> None:
        """SIGSTOP a just-started worker once it is loading the model: "hung at load".

        Not earlier: before the worker has set up its signal handling, a SIGTERM with the
        default action kills even a stopped process, and the escalation would end at SIGTERM.
        """
        self.wait_narration(started["worker_id"], "model_load_start")
        os.kill(started["pid"], signal.SIGSTOP)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=POOL_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.returncode = self.proc.returncode
        self.client.close()
        return self.returncode


@contextlib.contextmanager
def start_pool(*args: str, pool_id: str = "pt", fast: bool = True) -> Iterator[PoolProcess]:
    port = free_port()
    fd, name = tempfile.mkstemp(prefix=f"pool-{pool_id}-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    cmd = [sys.executable, "-m", "pool_managerd", "--port", str(port), "--pool-id", pool_id]
    cmd += ["--backend", selected_backend(), *(FAST_FLAGS if fast else ()), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    base_url = f"http://127.0.0.1:{port}"
    pool = PoolProcess(proc, base_url, log_path, httpx.Client(base_url=base_url, timeout=10.0))
    try:
        _wait_up(pool)
        yield pool
    finally:
        pool.stop()


def _wait_up(pool: PoolProcess) -> None:
    deadline = time.monotonic() + POOL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if pool.proc.poll() is not None:
            raise RuntimeError(f"pool exited with {pool.proc.returncode}:\n{pool.tail()}")
        with contextlib.suppress(httpx.TransportError):
            if pool.client.get("/health").status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"pool not up within {POOL_START_TIMEOUT_S} s:\n{pool.tail()}")


class EventRecorder:
    """Reads GET /v2/events on a thread until the pool ends the stream or `close()`."""

    def __init__(self, base_url: str):
        self.events: list[tuple[str, dict]] = []
        self.error: BaseException | None = None
        self._parser = SSEParser()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "event stream did not open"

    def _run(self, base_url: str) -> None:
        try:
            with httpx.stream("GET", f"{base_url}/v2/events", timeout=30.0) as response:
                self._connected.set()
                for chunk in response.iter_text():
                    self.events.extend(self._parser.feed(chunk))
                    if self._stop.is_set():
                        return
        except BaseException as error:  # surfaced by the test through .error
            self.error = error
            self._connected.set()

    def of(self, kind: str, **match) -> list[dict]:
        return [
            data
            for name, data in list(self.events)
            if name == kind and all(data.get(k) == v for k, v in match.items())
        ]

    def wait_for(self, kind: str, timeout_s: float = 30.0, **match) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.of(kind, **match)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise TimeoutError(f"no {kind} event matching {match} within {timeout_s} s")

    def close(self) -> None:
        self._stop.set()
