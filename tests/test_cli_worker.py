"""The real worker as a user runs it: `python -m worker_orcd` (and `hypercorn ... worker_orcd.asgi:app`)
as subprocesses on real sockets, with the real default model on the cpu backend.

Each test bounds its waits; the worker loads in a few seconds on 2 cores. On a GPU machine:
`WORKER_ORCD_TEST_BACKEND=cuda WORKER_ORCD_TEST_MODEL=/path/to/model.gguf pytest tests/test_cli_worker.py`
runs the same tests on the CUDA backend (which must give the same greedy tokens).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.sse import SSEParser, check_grammar

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0
FLAGS = [
    "--model",
    "--host",
    "--port",
    "--worker-id",
    "--gpu-device",
    "--backend",
    "--max-context",
    "--residency-interval",
    "--queue-size",
    "--drain-timeout",
    "--shutdown-deadline",
    "--max-vram-bytes",
    "--callback-url",
    "--model-ref",
    "--log-format",
    "--log-level",
    "--log-prompts",
    "--check-tensors",
    "--body-timeout",
    "--write-timeout",
    "--api-key",
    "--allowed-hosts",
    "--log-hash-key",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    def __init__(self, cmd: list[str], port: int, log: Path, env: dict | None = None):
        self.port, self.log = port, log
        self.base = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def narration(self) -> list[dict]:
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                body = httpx.get(self.base + "/health", timeout=2).json()
                if body["status"] == "ready":
                    return body
            time.sleep(0.1)
        raise AssertionError(f"not ready in time:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


BACKEND = os.environ.get("WORKER_ORCD_TEST_BACKEND", "cpu")
MODEL = os.environ.get("WORKER_ORCD_TEST_MODEL")  # default: the embedded model


def cli(port: int, *extra: str) -> list[str]:
    model = ["--model", MODEL] if MODEL and "--model" not in extra else []
    return [
        sys.executable,
        "-m",
        "worker_orcd",
        "--port",
        str(port),
        "--backend",
        BACKEND,
        *model,
        *extra,
    ]


def stream(client: httpx.Client, base: str, body: dict, on_event=None) -> list:
    parser, events = SSEParser(), []
    with client.stream("POST", base + "/execute", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            for event in parser.feed(chunk):
                events.append(event)
                if on_event is not None:
                    on_event(event)
    parser.close()
    check_grammar(events)
    return events


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    port = free_port()
    proc = Proc(
        cli(port, "--max-context", "512", "--worker-id", "cli-test"),
        port,
        tmp_path_factory.mktemp("cli") / "worker.log",
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_help_lists_every_flag_and_no_hidden_backend():
    out = subprocess.run(
        [sys.executable, "-m", "worker_orcd", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0
    for flag in FLAGS:
        assert flag in out.stdout
    assert "{auto,cpu,cuda}" in out.stdout and "fake" not in out.stdout


def test_bad_flag_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "worker_orcd", "--backend", "tpu"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2


def test_real_model_streams_what_llama_cpp_predicts(worker):
    health = httpx.get(worker.base + "/health", timeout=5).json()
    assert health["model"] == "SmolLM2-135M-Instruct.Q4_1" and health["quant_kind"] == "Q4_1"
    assert health["vocab_size"] == 49152 and health["context_length"] == 512
    assert health["tokenizer_kind"] == "gguf-bpe" and health["backend"] == BACKEND
    with httpx.Client() as client:
        events = stream(
            client,
            worker.base,
            {
                "job_id": "paris",
                "prompt": "The capital of France is",
                "max_tokens": 3,
                "temperature": 0,
            },
        )
    assert events[0].data["prompt_tokens"] == 5
    text = "".join(e.data["t"] for e in events if e.event == "token")
    # llama.cpp's greedy continuation (tests/data/reference/smollm2-greedy-1.txt): " Paris.\n\n..."
    assert text == " Paris.\n"
    assert events[-1].data == {
        "type": "end",
        "tokens_out": 3,
        "decode_time_ms": events[-1].data["decode_time_ms"],
        "stop_reason": "max_tokens",
    }


def test_real_model_chat_through_the_template(worker):
    body = {
        "job_id": "chat",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    with httpx.Client() as client:
        events = stream(client, worker.base, body)
    assert events[-1].event == "end" and events[-1].data["tokens_out"] > 0
    # ChatML adds a system prompt and role markers: far more tokens than the user text alone.
    assert events[0].data["prompt_tokens"] > 10
    starts = [
        e
        for e in worker.narration()
        if e.get("action") == "execute_start" and e.get("job_id") == "chat"
    ]
    assert starts and "Say hello" not in worker.log.read_text()


def test_sigterm_mid_stream_ends_the_stream_and_exits_0(tmp_path):
    # --shutdown-deadline 0: the running job is cancelled at once (the default lets it go on
    # for 5 s; tests/e2e/test_shutdown_process.py checks that).
    port = free_port()
    proc = Proc(
        cli(port, "--max-context", "256", "--shutdown-deadline", "0"),
        port,
        tmp_path / "sigterm.log",
    )
    try:
        proc.wait_ready()
        sent = {}

        def on_event(event):
            if event.event == "token" and "at" not in sent:
                proc.proc.send_signal(signal.SIGTERM)
                sent["at"] = time.monotonic()

        with httpx.Client() as client:
            events = stream(
                client,
                proc.base,
                {"job_id": "term", "prompt": "Once upon a time", "max_tokens": 200},
                on_event,
            )
        assert events[-1].event == "error" and events[-1].data["code"] == "CANCELLED"
        assert len([e for e in events if e.event == "token"]) < 20
        proc.proc.wait(timeout=10)
        assert time.monotonic() - sent["at"] < 5.0
        assert proc.proc.returncode == 0
    finally:
        proc.stop()
    actions = [e.get("action") for e in proc.narration()]
    assert actions[0] == "startup"
    for action in (
        "model_load_start",
        "model_load_progress",
        "model_load_complete",
        "ready",
        "execute_start",
        "signal",
        "shutdown",
    ):
        assert action in actions, action
    assert actions.index("listening") < actions.index("model_load_complete")
    assert actions[-1] == "shutdown"


def test_broken_model_file_exits_non_zero(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    port = free_port()
    proc = Proc(cli(port, "--model", str(bad)), port, tmp_path / "broken.log")
    try:
        assert proc.proc.wait(timeout=30) == 1
    finally:
        proc.stop()
    errors = [e for e in proc.narration() if e.get("action") == "error"]
    assert errors and errors[0]["code"] == "MODEL_LOAD_FAILED"
    assert "broken.gguf" in errors[0]["human"]


def hypercorn_cmd(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "trio",
        "--workers",
        "0",
        "--bind",
        f"127.0.0.1:{port}",
        "worker_orcd.asgi:app",
    ]


def hypercorn_env(**settings: str) -> dict[str, str]:
    """WORKER_ORCD_* for the hypercorn command: this run's backend and model, plus `settings`."""
    env = {"WORKER_ORCD_BACKEND": BACKEND, **({"WORKER_ORCD_MODEL": MODEL} if MODEL else {})}
    return env | {f"WORKER_ORCD_{name.upper()}": value for name, value in settings.items()}


def test_hypercorn_command_serves_the_same_app(tmp_path):
    port = free_port()
    # shutdown_deadline 0: SIGTERM cancels the running job at once
    env = hypercorn_env(max_context="256", worker_id="hc", shutdown_deadline="0")
    proc = Proc(hypercorn_cmd(port), port, tmp_path / "hc.log", env)
    try:
        health = proc.wait_ready()
        assert health["worker_id"] == "hc" and health["context_length"] == 256
        with httpx.Client() as client:
            events = stream(
                client,
                proc.base,
                {
                    "job_id": "hc1",
                    "prompt": "The capital of France is",
                    "max_tokens": 2,
                    "temperature": 0,
                },
            )
        assert "".join(e.data["t"] for e in events if e.event == "token") == " Paris."
        sent = {}

        def on_event(event):  # SIGTERM mid-stream: same drain as worker-orcd
            if event.event == "token" and "at" not in sent:
                proc.proc.send_signal(signal.SIGTERM)
                sent["at"] = time.monotonic()

        with httpx.Client() as client:
            body = {"job_id": "hc2", "prompt": "Once upon a time", "max_tokens": 100}
            events = stream(client, proc.base, body, on_event)
        assert events[-1].event == "error" and events[-1].data["code"] == "CANCELLED"
        assert proc.proc.wait(timeout=10) == 0
        assert time.monotonic() - sent["at"] < 5.0
    finally:
        proc.stop()


def test_hypercorn_command_exits_non_zero_when_an_actor_dies(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    port = free_port()
    env = {"WORKER_ORCD_BACKEND": BACKEND, "WORKER_ORCD_MODEL": str(bad)}
    proc = Proc(hypercorn_cmd(port), port, tmp_path / "hc-bad.log", env)
    try:
        assert proc.proc.wait(timeout=30) != 0
    finally:
        proc.stop()
    assert any(e.get("action") == "error" and e.get("level") == "error" for e in proc.narration())


TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) +[a-z_]+: \S.*"
)


def test_text_logs_and_the_log_level(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    port = free_port()
    cmd = cli(port, "--model", str(bad), "--log-format", "text", "--log-level", "warning")
    proc = Proc(cmd, port, tmp_path / "text.log")
    try:
        assert proc.proc.wait(timeout=30) == 1
    finally:
        proc.stop()
    lines = proc.log.read_text().splitlines()
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines), lines
    assert not any(" INFO " in line or " DEBUG " in line for line in lines)  # --log-level
    assert any(" ERROR   loader: The model failed to load" in line for line in lines), lines


def test_hypercorn_lines_go_through_the_same_text_formatter(tmp_path):
    port = free_port()
    env = hypercorn_env(max_context="128", log_format="text", log_level="debug")
    proc = Proc(hypercorn_cmd(port), port, tmp_path / "hc-text.log", env)
    try:
        proc.wait_ready()
        assert httpx.post(proc.base + "/shutdown", timeout=5).status_code == 202
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()
    lines = proc.log.read_text().splitlines()
    assert all(TEXT_LINE.fullmatch(line) for line in lines), [
        line for line in lines if not TEXT_LINE.fullmatch(line)
    ]
    assert any(f"http: Running on http://127.0.0.1:{port}" in line for line in lines), lines
    assert any("supervisor: Worker stopped cleanly." in line for line in lines)
