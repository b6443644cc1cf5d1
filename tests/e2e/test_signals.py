"""Repeated SIGTERM/SIGINT while the worker shuts down: the first one drains, the rest are
ignored, and the process still exits 0 within 5 s (never killed by the signal, never a
KeyboardInterrupt). A real worker subprocess on the default model."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import selected_model, sized_job, start_worker, stream_execute

pytestmark = pytest.mark.slow


def test_repeated_signals_during_shutdown_still_exit_0(tmp_path):
    log_path = tmp_path / "worker.log"
    # The running job may go on for the shutdown deadline (1 s here), then it is cancelled.
    max_context, body = sized_job("long", "outlasts")
    with start_worker(
        worker_id="signals",
        model=selected_model(),
        max_context=max_context,
        log_path=log_path,
        extra_args=("--shutdown-deadline", "1"),
    ) as worker:
        result = {}

        def run_stream() -> None:
            try:
                with httpx.Client() as client:
                    result["t"] = stream_execute(client, worker.base_url, body, timeout_s=30)
            except Exception as error:  # reported by the assertion at the end
                result["error"] = error

        reader = threading.Thread(target=run_stream)
        reader.start()
        deadline = time.monotonic() + 30
        while "execute_start" not in [e.get("action") for e in worker.narration()]:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        t0 = time.monotonic()
        # One SIGTERM, then a volley of both signals until the process is gone: during the
        # drain, while HTTP stops, and after the actor tree has returned.
        # The second signal goes at once: a GPU worker can finish its whole drain in ~30 ms.
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.send_signal(signal.SIGINT)
        sent = 2
        while worker.proc.poll() is None and time.monotonic() - t0 < 10:
            time.sleep(0.03)
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGINT if sent % 2 else signal.SIGTERM)
                sent += 1
        rc = worker.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        reader.join(timeout=10)
    log = log_path.read_text(errors="replace")
    assert rc == 0, f"exit status {rc} after {sent} signals:\n{log[-3000:]}"
    assert elapsed < 5.0
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    actions = [e.get("action") for e in worker.narration()]
    # Only the first signal is acted on. A repeat that lands while the receiver is open is
    # narrated as signal_ignored; one that lands after it closed is ignored by the OS disposition
    # the worker set, silently: whether the narration appears depends on timing, the exit does not.
    assert actions.count("signal") == 1
    assert actions[-1] == "shutdown"
    assert "t" in result, f"the stream was cut: {result.get('error')!r}"
    name, data = result["t"].terminal
    assert name == "error" and data["code"] == "CANCELLED"
