"""W-1902 on real processes: a canary sent through every path never reaches any output line.

Paths: a job that ends normally, bad requests (a field out of range, a bad role, an unknown
field named by the client, a prompt too long for the context, a cut JSON body), a job cancelled
by /cancel, a client that disconnects, and an engine that crashes with an exception quoting the
canary (tests/e2e/crashing_worker.py): the process's stdout and stderr, every line, are searched
for the canary and for a long piece of it. The logs still tell the story: the fingerprint of
the prompt (a keyed SHA-256 prefix and the length, REL-6) stands in for it.
"""

from __future__ import annotations

import secrets
import socket
import time

import httpx
import pytest

from runtime.narration import fingerprint
from runtime.redaction import set_log_hash_key
from tests.e2e.conftest import selected_model, start_worker, stream_execute

pytestmark = pytest.mark.slow
CANARY = f"CANARY-{secrets.token_hex(6)}-zebra-quartz-lantern"
CANARY_ENV = "WORKER_ORCD_TEST_CANARY"
HASH_KEY = "canary-test-log-hash-key"  # the worker's log hashes, reproducible here


def keyed_fingerprint(text: str) -> dict:
    try:
        set_log_hash_key(HASH_KEY)
        return fingerprint(text)
    finally:
        set_log_hash_key(None)


def assert_no_canary(log: str) -> None:
    for piece in (CANARY, CANARY[7:26], CANARY[-20:]):
        assert piece not in log, f"{piece!r} leaked:\n" + "\n".join(
            line for line in log.splitlines() if piece in line
        )


def _post(client: httpx.Client, base: str, body) -> httpx.Response:
    return client.post(f"{base}/execute", json=body)


def _disconnect_after_first_token(base: str, body: bytes) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (
            f"POST /execute HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        seen = b""
        while b"event: token" not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk


def test_the_canary_never_reaches_a_log_line_on_any_path(tmp_path):
    prompt = f"Please repeat after me: {CANARY}. Then stop."
    with (
        start_worker(
            worker_id="redact",
            model=selected_model(),
            log_path=tmp_path / "w.log",
            max_context=256,
            env={"WORKER_ORCD_LOG_HASH_KEY": HASH_KEY},
        ) as worker,
        httpx.Client(timeout=120) as client,
    ):
        base = worker.base_url
        ok = stream_execute(client, base, {"job_id": "ok", "prompt": prompt, "max_tokens": 3})
        assert ok.terminal[0] == "end"
        bad = [
            {"job_id": "b1", "prompt": prompt, "max_tokens": 0},
            {"job_id": "b2", "messages": [{"role": "wizard", "content": prompt}]},
            {"job_id": "b3", "prompt": "hi", CANARY: 1},
            {"job_id": "b4", "prompt": prompt * 40, "max_tokens": 8},  # over the context
            {
                "job_id": "b5",
                "messages": [{"role": "user", "content": prompt}],
                "stop": [CANARY] * 9,
            },
        ]
        for body in bad:
            assert _post(client, base, body).status_code == 400, body
        cut = client.post(
            f"{base}/execute",
            content=f'{{"job_id": "b6", "prompt": "{CANARY}'.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert cut.status_code == 400
        with client.stream(
            "POST", f"{base}/execute", json={"job_id": "c1", "prompt": prompt, "max_tokens": 200}
        ) as response:
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("event: token") and lines.count(line) == 1:
                    assert client.post(f"{base}/cancel", json={"job_id": "c1"}).status_code == 202
        rest = "\n".join(lines).encode()
        assert b"CANCELLED" in rest
        body = f'{{"job_id": "d1", "prompt": "{CANARY}", "max_tokens": 200}}'.encode()
        _disconnect_after_first_token(base, body)
        deadline = time.monotonic() + 60
        while "d1" not in [
            e.get("job_id") for e in worker.narration() if e.get("action") == "execute_end"
        ]:
            assert time.monotonic() < deadline, "the disconnected job never ended"
            time.sleep(0.05)
    log = worker.log_text()
    assert worker.returncode == 0
    assert_no_canary(log)
    events = worker.narration()
    start = next(e for e in events if e.get("action") == "execute_start" and e["job_id"] == "ok")
    assert start["prompt"] == keyed_fingerprint(prompt)  # what stands in for the text
    assert start["prompt"] != fingerprint(prompt)  # the key matters (this process's is random)
    refused = [e for e in events if e.get("action") == "execute_rejected"]
    assert {e["target"] for e in refused} >= {"b1", "b2", "b3", "b4", "b5"}
    ends = {e["job_id"]: e for e in events if e.get("action") == "execute_end"}
    assert ends["c1"]["code"] == ends["d1"]["code"] == "CANCELLED"


def test_a_crash_report_quoting_the_canary_is_redacted(tmp_path):
    with (
        start_worker(
            worker_id="crash",
            model=selected_model(),
            log_path=tmp_path / "w.log",
            program=("tests/e2e/crashing_worker.py",),
            env={CANARY_ENV: CANARY},
        ) as worker,
        httpx.Client(timeout=120) as client,
    ):
        prompt = f"Tell me about {CANARY} please"
        crashed = stream_execute(
            client, worker.base_url, {"job_id": "boom", "prompt": prompt, "max_tokens": 5}
        )
        assert crashed.terminal[0] == "error" and crashed.terminal[1]["code"] == "INTERNAL"
        rc = worker.proc.wait(timeout=60)
    assert rc == 1
    log = worker.log_text()
    assert_no_canary(log)
    crash = [
        e
        for e in worker.narration()
        if e.get("action") == "error" and e.get("actor") == "supervisor"
    ]
    assert crash and "decode step failed while continuing" in crash[-1]["human"]
    assert "[redacted sha256=" in crash[-1]["human"] and crash[-1]["redacted"] is True
