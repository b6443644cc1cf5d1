"""POST /shutdown and SIGTERM on real worker processes (W-1340): one path, a deadline, exit 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import selected_model, sized_job, start_worker, stream_execute

pytestmark = pytest.mark.slow
EXIT_WAIT_S = 30.0


def _stream_in_thread(worker, body: dict, result: dict) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.Client() as client:
                result["t"] = stream_execute(client, worker.base_url, body, timeout_s=120)
        except Exception as error:  # reported by the assertions
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(worker, action: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while action not in [e.get("action") for e in worker.narration()]:
        assert time.monotonic() < deadline, f"no {action} in time"
        assert worker.proc.poll() is None, worker.log_text()[-2000:]
        time.sleep(0.02)


def test_post_shutdown_refuses_new_work_cancels_at_the_deadline_and_exits_0(tmp_path):
    deadline = 1.5
    max_context, body = sized_job("long", "outlasts")
    with start_worker(
        worker_id="shutdown",
        model=selected_model(),
        max_context=max_context,
        log_path=tmp_path / "worker.log",
        extra_args=("--shutdown-deadline", str(deadline)),
    ) as worker:
        result: dict = {}
        reader = _stream_in_thread(worker, body, result)
        _wait_for(worker, "execute_start")
        t0 = time.monotonic()
        with httpx.Client(timeout=5) as client:
            first = client.post(f"{worker.base_url}/shutdown")
            assert first.status_code == 202 and first.json()["first_request"] is True
            again = client.post(f"{worker.base_url}/shutdown")
            assert again.status_code == 202 and again.json()["first_request"] is False
            late = client.post(f"{worker.base_url}/execute", json={"job_id": "x", "prompt": "a"})
            assert late.status_code == 503 and late.json()["error"]["code"] == "DRAINING"
        rc = worker.proc.wait(timeout=EXIT_WAIT_S)
        elapsed = time.monotonic() - t0
        reader.join(timeout=10)
    assert rc == 0, worker.log_text()[-3000:]
    assert deadline <= elapsed < deadline + 5.0
    name, data = result["t"].terminal
    assert name == "error" and data["code"] == "CANCELLED" and "deadline" in data["message"]
    actions = [e.get("action") for e in worker.narration()]
    assert actions.index("shutdown_requested") < actions.index("shutdown_deadline")
    assert actions.index("shutdown_deadline") < actions.index("engine_closed")
    assert actions[-1] == "shutdown"


def test_sigterm_takes_the_same_path_and_lets_the_running_job_finish(tmp_path):
    max_context, body = sized_job("short", "finishes")
    with start_worker(
        worker_id="sigterm",
        model=selected_model(),
        max_context=max_context,
        log_path=tmp_path / "worker.log",
        extra_args=("--shutdown-deadline", "60"),  # a loaded 2-core box is slow; never reached
    ) as worker:
        result: dict = {}
        reader = _stream_in_thread(worker, body, result)
        _wait_for(worker, "execute_start")
        worker.proc.send_signal(signal.SIGTERM)
        rc = worker.proc.wait(timeout=EXIT_WAIT_S + 60)
        reader.join(timeout=10)
    assert rc == 0, worker.log_text()[-3000:]
    name, data = result["t"].terminal
    assert name == "end"  # it finished (all its tokens, or at EOS): it was not cut
    assert data["tokens_out"] == body["max_tokens"] or data["stop_reason"] == "eos"
    events = worker.narration()
    actions = [e.get("action") for e in events]
    assert "signal" in actions and "shutdown_deadline" not in actions
    drain = next(e for e in events if e.get("action") == "shutdown")
    assert drain["running"] == 1 and drain["deadline_s"] == 60
    assert actions.index("execute_end") < actions.index("engine_closed") < len(actions) - 1


def test_an_idle_worker_shuts_down_at_once(tmp_path):
    with start_worker(
        worker_id="idle", model=selected_model(), log_path=tmp_path / "worker.log"
    ) as worker:
        t0 = time.monotonic()
        assert httpx.post(f"{worker.base_url}/shutdown", timeout=5).status_code == 202
        rc = worker.proc.wait(timeout=EXIT_WAIT_S)
        elapsed = time.monotonic() - t0
    assert rc == 0 and elapsed < 5.0, (rc, elapsed)
