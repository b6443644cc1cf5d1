"""The spec's exit criterion: a worker spawned by the pool passes the haiku test.

The same test as tests/e2e/test_haiku.py (a random nonce, the current minute spelled in words),
against a worker the pool started, found through `/v2/state`, its narration read from the
pool's log (where it is relayed, tagged with the worker's id). On a GPU host:

    WORKER_ORCD_TEST_BACKEND=cuda python -m pytest -q -s tests/pool/test_pool_haiku.py

also checks and prints the NVML figures: the device's total / used / free memory, and what
the driver attributes to the worker's process next to what the worker reported.
"""

from __future__ import annotations

import datetime
import json
import secrets
import time
import types

import httpx
import pytest

from tests.e2e.conftest import RESULTS_DIR, selected_backend
from tests.e2e.test_haiku import EXECUTE_ACTIONS, MAX_ATTEMPTS, _attempt
from tests.pool.pool_process import needs_callback, start_pool


def haiku_attempts(base_url: str, run_dir, run_id: str) -> list[dict]:
    """The e2e test's attempts (its `_attempt` needs only the worker's `base_url`)."""
    worker = types.SimpleNamespace(base_url=base_url)
    attempts = []
    with httpx.Client() as client:
        for n in range(1, MAX_ATTEMPTS + 1):
            attempts.append(_attempt(worker, client, run_dir, n, run_id))
            if attempts[-1]["protocol_problems"] or attempts[-1]["passed"]:
                break
    return attempts


def leaked_into(log: str, attempts: list[dict]) -> list[str]:
    """Nonces, and generated texts of 20+ characters (as written or JSON-escaped), in `log`."""
    leaks = [a["nonce"] for a in attempts if a["nonce"] in log]
    for text in (a["text"] or "" for a in attempts):
        forms = {text, json.dumps(text, ensure_ascii=True)[1:-1]}
        if len(text) >= 20 and any(form in log for form in forms):
            leaks.append(text)
    return leaks


@pytest.mark.slow
@needs_callback
def test_a_worker_started_by_the_pool_writes_the_haiku():
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    run_dir = RESULTS_DIR / "pool-haiku" / run_id
    run_dir.mkdir(parents=True)
    with start_pool(pool_id="haiku") as pool:
        wid = pool.start_worker()["worker_id"]
        worker = pool.wait_status(wid, "ready")
        attempts = haiku_attempts(worker["uri"], run_dir, run_id)
        state = pool.state()
        (run_dir / "pool-state.json").write_text(json.dumps(state, indent=2))
        expected = {(a, t["request"]["job_id"]) for t in attempts for a in EXECUTE_ACTIONS}
        deadline = time.monotonic() + 5.0
        while True:  # the end event may be written just after the stream closed
            narrated = {
                (e.get("action"), e.get("job_id"))
                for e in pool.log_events()
                if e.get("worker_id") == wid
            }
            if expected <= narrated or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert pool.post("/v2/workers/stop", {"worker_id": wid}).status_code == 202
        assert pool.wait_status(wid, {"stopped", "failed"}, timeout_s=30)["status"] == "stopped"
    log = pool.log_text()
    (run_dir / "pool-stderr.log").write_text(log)

    for a in attempts:
        assert not a["protocol_problems"], f"attempt {a['attempt']}: {a['protocol_problems']}"
    assert not leaked_into(log, attempts), "prompt or generated text in the pool's log"
    assert expected <= narrated, f"missing narration: {sorted(expected - narrated)}"
    assert any(a["passed"] for a in attempts), (
        f"no haiku out of {len(attempts)} had the minute word; see {run_dir}:\n"
        + "\n".join(f"  {a['minute_word']!r}: {a['text']!r}" for a in attempts)
    )
    (gpu,) = [g for g in state["gpus"] if wid in g["workers"]]
    (record,) = [w for w in state["workers"] if w["id"] == wid]
    assert gpu["allocated_vram"] == record["vram_used"] > 0
    if selected_backend() == "cuda":
        # The driver's own figure for the worker's process: the engine's buffers plus the CUDA
        # context, so at least what the worker reported holding. (A container that hides other
        # PID namespaces from NVML lists no processes: then there is no figure to check.)
        if "vram_nvml" in record:
            assert record["vram_nvml"] >= record["vram_used"], record
        print(
            f"\nNVML: GPU {gpu['id']} {gpu['name']}: total {gpu['device_total']}, "
            f"used {gpu['device_used']}, free {gpu['device_free']}; worker {wid} pid "
            f"{record['pid']}: reported {record['vram_used']} bytes, NVML {record.get('vram_nvml')}"
        )
