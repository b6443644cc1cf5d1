"""End-to-end helpers: a real worker subprocess, and a strict SSE parser.

`start_worker(...)` runs `python -m worker_orcd` on a free port, waits (bounded) for `/health` to
say `ready`, and stops it with SIGTERM (killing it only if it overstays). Its stderr, the
narration log, goes to a file the test can read. `WORKER_ORCD_TEST_BACKEND` (default `cpu`)
picks the backend, so a GPU machine runs the same tests with `cuda`; `WORKER_ORCD_TEST_MODEL`
(default: the embedded model) the GGUF file.

`SSEParser` checks framing strictly: every event has one `event:` line and one JSON `data:` line
whose `"type"` matches. `check_stream(events)` checks the protocol on top: `started` first,
tokens numbered 0, 1, 2, ..., and exactly one terminal event (`end` or `error`), last.

Test modules import the helpers as `tests.e2e.conftest` (several conftest.py files share the
bare name `conftest`); `bench/bench_http.py` loads this file by path. Keep the helpers free of
pytest-only machinery; only the fixtures at the bottom need pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / ".test-results"
BACKEND_ENV = "WORKER_ORCD_TEST_BACKEND"
MODEL_ENV = "WORKER_ORCD_TEST_MODEL"  # a GGUF path; unset: the worker's embedded default
TERMINAL_EVENTS = ("end", "error")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0  # the worker must exit within 5 s of SIGTERM; allow slack before killing


def selected_backend() -> str:
    """The backend the e2e tests run on: `WORKER_ORCD_TEST_BACKEND`, default cpu."""
    return os.environ.get(BACKEND_ENV, "cpu")


def selected_model() -> str | None:
    """The model the e2e tests serve: `WORKER_ORCD_TEST_MODEL`, default the embedded one."""
    return os.environ.get(MODEL_ENV) or None


#: Jobs sized to the backend for the shutdown and signal tests: backend -> kind -> (max_context,
#: prompt, max_tokens). "outlasts" is still running a few seconds after it starts: on the GPU,
#: which decodes ~1,400+ tokens/s, a context long enough for ~3 s of decode and a counting
#: prompt (greedy decoding goes on counting rather than ending); on the cpu a 4-token prompt,
#: whose one prefill pass stays short on a loaded 2-core box (a cancel waits for the pass).
#: "finishes" is running when a signal lands right after its start (a GPU decodes 6 tokens in
#: ~4 ms) and ends well inside a 60 s deadline.
JOBS = {
    "cpu": {
        "outlasts": (None, "Once upon a time", 500),
        "finishes": (None, "Once upon a time", 6),
    },
    "cuda": {
        "outlasts": (4096, "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", 4000),
        "finishes": (4096, "Once upon a time", 2000),
    },
}


def sized_job(job_id: str, kind: str, backend: str | None = None) -> tuple[int | None, dict]:
    """(max_context for start_worker, /execute body) of a `kind` job (JOBS) on `backend`
    (default: the selected one)."""
    max_context, prompt, max_tokens = JOBS[backend or selected_backend()][kind]
    return max_context, {"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens}


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the OS may hand it out again; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- worker subprocess


@attrs.define
class WorkerProcess:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    backend: str
    returncode: int | None = None
    stop_seconds: float | None = None
    killed: bool = False

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def narration(self) -> list[dict]:
        """The JSON events on the worker's stderr (other lines, e.g. a traceback, are skipped)."""
        events = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    events.append(obj)
        return events

    def health(self, client: httpx.Client | None = None) -> dict:
        getter = client.get if client is not None else httpx.get
        return getter(f"{self.base_url}/health", timeout=5.0).json()

    def stop(self) -> int:
        """SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL. Returns the exit status."""
        if self.returncode is not None:
            return self.returncode
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.stop_seconds = time.monotonic() - t0
        self.returncode = self.proc.returncode
        return self.returncode


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def start_worker(
    *,
    backend: str | None = None,
    model: str | None = None,
    worker_id: str = "e2e",
    max_context: int | None = None,
    extra_args: tuple[str, ...] = (),
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    program: tuple[str, ...] = ("-m", "worker_orcd"),
    env: dict[str, str] | None = None,
) -> Iterator[WorkerProcess]:
    """Run a worker until the `with` block ends; yields once `/health` says `ready`.

    `program`: what follows the Python executable (a script path for a wrapped worker).
    """
    backend = backend or selected_backend()
    port = free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"worker-{worker_id}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, *program, "--port", str(port), "--backend", backend]
    cmd += ["--worker-id", worker_id]
    if model is not None:
        cmd += ["--model", model]
    if max_context is not None:
        cmd += ["--max-context", str(max_context)]
    cmd += list(extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    worker = WorkerProcess(proc, f"http://127.0.0.1:{port}", log_path, backend)
    try:
        _wait_ready(worker, ready_timeout_s)
        yield worker
    finally:
        worker.stop()


def _wait_ready(worker: WorkerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {worker.proc.returncode} before ready:\n"
                    f"{_log_tail(worker.log_path)}"
                )
            try:
                body = client.get(f"{worker.base_url}/health").json()
            except (httpx.TransportError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                last = json.dumps(body)
                if body.get("status") == "ready":
                    return
                if body.get("status") == "unhealthy":
                    raise RuntimeError(f"worker unhealthy while starting: {last}")
            time.sleep(0.2)
    raise TimeoutError(
        f"worker not ready within {timeout_s} s (last /health: {last}):\n"
        f"{_log_tail(worker.log_path)}"
    )


def metric_values(base_url: str, client: httpx.Client | None = None) -> dict[str, float]:
    """GET /metrics -> {sample name (plus `{outcome=...}` where present): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    getter = client.get if client is not None else httpx.get
    response = getter(f"{base_url}/metrics", timeout=5.0)
    response.raise_for_status()
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            outcome = sample.labels.get("outcome")
            values[sample.name + (f"{{outcome={outcome}}}" if outcome else "")] = sample.value
    return values


# --------------------------------------------------------------------------- SSE


class SSEFramingError(AssertionError):
    """The byte stream is not well-formed SSE in our protocol's shape."""


class SSEParser:
    """Incremental, strict parser: feed text as it arrives, get whole (event, data) pairs."""

    def __init__(self) -> None:
        self._buf = ""
        self.events: list[tuple[str, dict]] = []

    def feed(self, chunk: str) -> list[tuple[str, dict]]:
        self._buf += chunk.replace("\r\n", "\n")
        out = []
        while "\n\n" in self._buf:
            block, self._buf = self._buf.split("\n\n", 1)
            parsed = _parse_block(block)
            if parsed is not None:
                out.append(parsed)
        self.events.extend(out)
        return out

    def close(self) -> list[tuple[str, dict]]:
        """End of stream: nothing may be left half-sent."""
        if self._buf.strip("\n"):
            raise SSEFramingError(f"stream ended inside an event: {self._buf!r}")
        return self.events


def _parse_block(block: str) -> tuple[str, dict] | None:
    """One blank-line-separated block -> (event, data); None for a comment-only keep-alive."""
    names: list[str] = []
    datas: list[str] = []
    for line in block.split("\n"):
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, sep, value = line.partition(":")
        if not sep:
            raise SSEFramingError(f"line without a field name: {line!r}")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            names.append(value)
        elif field == "data":
            datas.append(value)
        elif field not in ("id", "retry"):
            raise SSEFramingError(f"unknown SSE field {field!r} in {block!r}")
    if not names and not datas:
        return None
    if len(names) != 1 or len(datas) != 1:
        raise SSEFramingError(f"an event needs one event: and one data: line: {block!r}")
    try:
        data = json.loads(datas[0])
    except ValueError as exc:
        raise SSEFramingError(f"data is not JSON: {datas[0]!r}") from exc
    if not isinstance(data, dict) or data.get("type") != names[0]:
        raise SSEFramingError(f"data.type does not match event {names[0]!r}: {datas[0]!r}")
    return names[0], data


def parse_sse(text: str) -> list[tuple[str, dict]]:
    parser = SSEParser()
    parser.feed(text)
    return parser.close()


def check_stream(events: list[tuple[str, dict]]) -> None:
    """Protocol shape: [started, token*] then exactly one terminal event, last."""
    if not events:
        raise SSEFramingError("empty stream")
    names = [name for name, _ in events]
    terminals = [i for i, name in enumerate(names) if name in TERMINAL_EVENTS]
    if terminals != [len(events) - 1]:
        raise SSEFramingError(f"need exactly one terminal event, last; got {names}")
    body = names[:-1]
    if body and body[0] != "started":
        raise SSEFramingError(f"first event must be started, got {names[0]!r}")
    if body.count("started") > 1 or any(n not in ("started", "token") for n in body):
        raise SSEFramingError(f"unexpected events before the terminal one: {names}")
    indexes = [data["i"] for name, data in events if name == "token"]
    if indexes != list(range(len(indexes))):
        raise SSEFramingError(f"token indexes are not 0, 1, 2, ...: {indexes}")
    if any(not isinstance(data.get("t"), str) for name, data in events if name == "token"):
        raise SSEFramingError("a token event without a string 't'")
    name, data = events[-1]
    if name == "end" and data.get("tokens_out") != len(indexes):
        raise SSEFramingError(f"end.tokens_out={data.get('tokens_out')} but {len(indexes)} tokens")
    if name == "error" and not {"code", "message", "retriable"} <= set(data):
        raise SSEFramingError(f"error event lacks code/message/retriable: {data}")


@attrs.define
class Transcript:
    status_code: int
    raw: str  # the response body exactly as received
    events: list[tuple[str, dict]]
    arrivals: list[float]  # perf_counter() when each event was parsed
    request_sent: float  # perf_counter() just before the request

    @property
    def text(self) -> str:
        return "".join(data["t"] for name, data in self.events if name == "token")

    @property
    def terminal(self) -> tuple[str, dict]:
        return self.events[-1]


def stream_execute(
    client: httpx.Client, base_url: str, body: dict, *, timeout_s: float = 300.0
) -> Transcript:
    """POST /execute and read the SSE stream to its end (bounded by `timeout_s` overall)."""
    parser = SSEParser()
    arrivals: list[float] = []
    chunks: list[str] = []
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    with client.stream("POST", f"{base_url}/execute", json=body, timeout=60.0) as response:
        for chunk in response.iter_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream still running after {timeout_s} s")
            chunks.append(chunk)
            now = time.perf_counter()
            arrivals.extend(now for _ in parser.feed(chunk))
        status = response.status_code
    raw = "".join(chunks)
    if status != 200:
        return Transcript(status, raw, [], [], t0)
    return Transcript(status, raw, parser.close(), arrivals, t0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def e2e_worker(tmp_path_factory) -> Iterator[WorkerProcess]:
    """One real worker per test module (loading the model takes a while on 2 cores)."""
    log_path = tmp_path_factory.mktemp("worker") / "worker-stderr.log"
    with start_worker(worker_id="e2e", model=selected_model(), log_path=log_path) as worker:
        yield worker
    assert worker.returncode == 0 and not worker.killed, (
        f"worker did not exit cleanly on SIGTERM (rc={worker.returncode}, "
        f"killed={worker.killed}):\n{_log_tail(log_path)}"
    )
