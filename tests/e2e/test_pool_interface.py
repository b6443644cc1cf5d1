"""The pool manager's interface on a real process: `--port 0 --callback-url URL --model-ref REF`.

The worker picks a free port itself, tells the callback where it is, and the URI it reports is
the one that answers /health and POST /shutdown (202, then exit 0). A refused callback ends
the worker with exit status 1 and says why.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, selected_backend, selected_model

pytestmark = pytest.mark.slow
WAIT_S = 120.0


class _Pool(http.server.BaseHTTPRequestHandler):
    status = 200
    received: list[dict]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        self.received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def pool_server(status: int) -> tuple[http.server.HTTPServer, list[dict]]:
    received: list[dict] = []
    handler = type("Pool", (_Pool,), {"status": status, "received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def worker_cmd(callback_url: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "worker_orcd", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--worker-id", "pooled", "--backend", selected_backend(), "--gpu-device", "0"]
    cmd += ["--callback-url", callback_url, *extra]
    model = selected_model()
    return cmd + (["--model", model] if model else [])


def test_port_0_and_the_ready_callback_tell_the_pool_where_the_worker_is(tmp_path):
    server, received = pool_server(204)
    url = f"http://127.0.0.1:{server.server_port}/workers/ready"
    log = tmp_path / "w.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            worker_cmd(url, "--model-ref", "pool:smollm2"), cwd=REPO_ROOT, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while not received:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no ready callback"
            time.sleep(0.05)
        (call,) = received
        body = call["body"]
        assert call["path"] == "/workers/ready"
        assert body["worker_id"] == "pooled" and body["model_ref"] == "pool:smollm2"
        assert body["memory_architecture"] == "vram-only"
        caps = body["capabilities"]
        assert caps["backend"] == selected_backend() and caps["streaming"] and caps["cancel"]
        assert caps["quant_kind"] and caps["max_context"] > 0
        assert body["vram_bytes"] >= (1 if selected_backend() == "cuda" else 0)
        uri = body["uri"]
        assert uri.startswith("http://127.0.0.1:") and not uri.endswith(":0")
        health = httpx.get(f"{uri}/health", timeout=5).json()
        assert health["status"] == "ready" and health["worker_id"] == "pooled"
        assert httpx.post(f"{uri}/shutdown", timeout=5).status_code == 202
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        server.shutdown()
        server.server_close()


def test_a_refused_callback_ends_the_worker_with_exit_1(tmp_path):
    server, received = pool_server(409)
    url = f"http://127.0.0.1:{server.server_port}/ready"
    log = tmp_path / "w.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.run(
                worker_cmd(url), cwd=REPO_ROOT, stdout=out, stderr=out, timeout=WAIT_S
            )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert len(received) == 1  # a refusal is not retried
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (failed,) = [e for e in events if e["action"] == "ready_callback_failed"]
    assert "HTTP 409" in failed["human"]
    assert events[-1]["action"] == "shutdown" and events[-1]["exit_code"] == 1
