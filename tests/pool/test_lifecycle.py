"""The worker lifecycle with real processes: a real pool, real workers, real signals.

Every failure here is produced for real, never simulated: a worker is SIGKILLed (a crash), or
SIGSTOPped (it stops answering anything: at load it is "hung at load" and never calls back;
when ready it misses its health polls and ignores /shutdown and SIGTERM, so a stop must
escalate to SIGKILL, which a stopped process cannot ignore). The time limits are shrunk by
flags (tests/pool/pool_process.FAST_FLAGS), so every test is bounded by seconds.
"""

from __future__ import annotations

import datetime
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pool_managerd.model_refs import resolve_model_ref
from pool_managerd.preflight import examine
from tests.pool.pool_process import (
    EventRecorder,
    needs_callback,
    pool_device,
    pool_model_ref,
    start_pool,
)

pytestmark = [pytest.mark.slow, needs_callback]


def gone(pid: int) -> bool:
    """Whether `pid` has exited (and been reaped by its parent, the pool)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pid: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout_s} s"
        time.sleep(0.05)


def device_view(state: dict) -> dict:
    (view,) = [g for g in state["gpus"] if g["id"] == pool_device()]
    return view


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_start_ready_stop_with_events_metrics_and_tagged_narration():
    with start_pool(pool_id="life") as pool:
        events = EventRecorder(pool.base_url)
        started = pool.start_worker()
        wid = started["worker_id"]
        assert started["status"] == "starting" and started["pid"] > 0
        assert started["vram_reserved"] > 0
        ready = pool.wait_status(wid, "ready")
        assert ready["uri"].startswith("http://127.0.0.1:") and ready["ready_at"]
        # The worker itself says ready, at the URI it called back with.
        health = httpx.get(f"{ready['uri']}/health", timeout=5).json()
        assert health["status"] == "ready" and health["worker_id"] == wid

        state = pool.state()
        view = device_view(state)
        assert view["workers"] == [wid]
        # Every field issue 12 names for /v2/state (POOL-API-5), with its value.
        assert {"id", "total_vram", "allocated_vram", "available_vram", "workers"} <= view.keys()
        (mine,) = state["workers"]
        named = {"id", "model_ref", "gpu", "vram_used", "uri", "pid", "status", "started_at"}
        assert named | {"exit_code"} <= mine.keys()
        assert (mine["id"], mine["model_ref"], mine["gpu"], mine["status"]) == (
            wid, pool_model_ref(), pool_device(), "ready"
        )  # fmt: skip
        assert mine["pid"] == started["pid"] and mine["uri"] == ready["uri"]
        assert mine["exit_code"] is None and mine["vram_used"] == view["allocated_vram"]
        parse = datetime.datetime.fromisoformat
        assert (
            parse(mine["started_at"])
            <= parse(mine["ready_at"])
            <= datetime.datetime.now(datetime.UTC)
        )
        assert view["allocated_vram"] == ready["vram_used"] == ready["vram_reserved"]
        assert view["available_vram"] <= view["total_vram"] - view["allocated_vram"]
        scraped = metric_values(pool.client.get("/metrics").text)
        labels = (("gpu", str(pool_device())), ("pool_id", "life"))
        assert scraped[("pool_mgr_gpu_vram_allocated_bytes", labels)] == view["allocated_vram"]
        assert scraped[("pool_mgr_gpu_vram_total_bytes", labels)] == view["total_vram"]
        ready_labels = (("pool_id", "life"), ("status", "ready"))
        assert scraped[("pool_mgr_workers_total", ready_labels)] == 1

        stop = pool.post("/v2/workers/stop", {"worker_id": wid})
        assert stop.status_code == 202, stop.text
        stopped = pool.wait_status(wid, {"stopped", "failed"}, timeout_s=20)
        assert stopped["status"] == "stopped", stopped
        assert stopped["exit_code"] == 0 and stopped["stopped_by"] == "shutdown", stopped
        wait_gone(stopped["pid"])
        assert device_view(pool.state())["allocated_vram"] == 0
        # Stopping twice is fine and changes nothing.
        again = pool.post("/v2/workers/stop", {"worker_id": wid})
        assert again.status_code == 202 and again.json()["status"] == "stopped"

        statuses = [e["status"] for e in events.of("worker_status", worker_id=wid)]
        assert statuses == ["starting", "ready", "draining", "stopping", "stopped"], statuses
        percents = [e["percent"] for e in events.of("worker_load_progress", worker_id=wid)]
        assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
        events.close()

        # The worker's own narration is in the pool's log, tagged with its id.
        worker_lines = [e for e in pool.log_events() if e.get("worker_id") == wid]
        actions = {e["action"] for e in worker_lines}
        assert {"model_load_complete", "ready"} <= actions, actions
    assert pool.returncode == 0


def test_two_workers_on_one_device_then_the_device_is_full():
    path = resolve_model_ref(pool_model_ref())
    kind = "cuda" if pool_device() != "cpu" else "cpu"
    reserved = examine(path, device_kind=kind, max_context=None).bytes_needed  # preflight's
    limit = int(2.5 * reserved)  # room for two workers, not three
    with start_pool("--memory-limit", str(limit), pool_id="dev") as pool:
        spawned = time.monotonic()
        a = pool.start_worker()["worker_id"]
        b = pool.start_worker()["worker_id"]
        full = pool.post(
            "/v2/workers/start", {"model_ref": pool_model_ref(), "gpu_id": pool_device()}
        )
        assert full.status_code == 409, full.text
        error = full.json()["error"]
        assert error["code"] == "INSUFFICIENT_VRAM" and error["field"] == "gpu_id"
        assert error["details"]["needed_bytes"] == reserved
        assert error["details"]["available_bytes"] == limit - 2 * reserved
        assert error["details"]["allocated_bytes"] == 2 * reserved

        ra, rb = pool.wait_status(a, "ready"), pool.wait_status(b, "ready")
        assert ra["uri"] != rb["uri"] and ra["pid"] != rb["pid"]
        view = device_view(pool.state())
        assert sorted(view["workers"]) == sorted([a, b])
        assert view["allocated_vram"] == 2 * reserved
        for record in (ra, rb):  # both serve
            body = {"job_id": "j", "prompt": "Hello", "max_tokens": 3, "temperature": 0}
            answer = httpx.post(f"{record['uri']}/execute", json=body, timeout=60)
            assert answer.status_code == 200 and "event: end" in answer.text

        # Still alive and ready well after trio's idle worker threads have exited (10 s): the
        # death signal is tied to the thread that forked, and that must be the pool's own.
        time.sleep(max(0.0, spawned + 11.0 - time.monotonic()))
        assert [pool.worker(w)["status"] for w in (a, b)] == ["ready", "ready"]
        assert not gone(ra["pid"]) and not gone(rb["pid"])

        # The pool's own SIGTERM: both workers are stopped cleanly, then the pool exits 0.
        t0 = time.monotonic()
        assert pool.stop(signal.SIGTERM) == 0, pool.tail()
        assert time.monotonic() - t0 < 15
        for record in (ra, rb):
            assert gone(record["pid"])
        final = {
            e["target"]: e
            for e in pool.log_events()
            if e.get("action") == "worker_status" and e.get("worker_id") == "dev"
        }
        for wid in (a, b):
            assert final[wid]["status"] == "stopped" and final[wid]["exit_code"] == 0, final[wid]


def test_a_sigkilled_worker_fails_frees_its_memory_and_is_not_restarted():
    with start_pool(pool_id="crash") as pool:
        wid = pool.start_worker()["worker_id"]
        pid = pool.wait_status(wid, "ready")["pid"]
        os.kill(pid, signal.SIGKILL)
        failed = pool.wait_status(wid, "failed", timeout_s=10)
        assert failed["exit_code"] == -signal.SIGKILL
        assert "exited unexpectedly" in failed["reason"] and "SIGKILL" in failed["reason"]
        assert any('"action":"ready"' in line for line in failed["last_log_lines"])
        assert failed["vram_used"] == 0
        state = pool.state()
        assert device_view(state)["allocated_vram"] == 0 and device_view(state)["workers"] == []
        time.sleep(1.0)  # no automatic restart: still one record, failed, and no new process
        assert [w["status"] for w in pool.state()["workers"]] == ["failed"]
        scraped = metric_values(pool.client.get("/metrics").text)
        assert (
            scraped[("pool_mgr_workers_total", (("pool_id", "crash"), ("status", "failed")))] == 1
        )


def test_a_worker_hung_at_load_is_killed_and_failed_at_the_ready_deadline():
    with start_pool("--ready-timeout", "3", pool_id="hang") as pool:
        started = pool.start_worker()
        pool.freeze_at_load(started)  # it never calls back
        t0 = time.monotonic()
        failed = pool.wait_status(started["worker_id"], "failed", timeout_s=10)
        assert "no ready callback within 3.0 s" in failed["reason"]
        done = pool.wait_exit_code(started["worker_id"], timeout_s=10)
        # SIGTERM stays pending on a stopped process; the escalation's SIGKILL ends it.
        assert done["exit_code"] == -signal.SIGKILL and done["stopped_by"] == "SIGKILL"
        assert time.monotonic() - t0 < 3 + 2 + 5
        assert device_view(pool.state())["allocated_vram"] == 0


def test_a_worker_that_stops_answering_misses_three_polls_and_fails():
    with start_pool(pool_id="poll") as pool:
        wid = pool.start_worker()["worker_id"]
        pid = pool.wait_status(wid, "ready")["pid"]
        os.kill(pid, signal.SIGSTOP)
        failed = pool.wait_status(wid, "failed", timeout_s=10)
        assert failed["reason"].startswith("missed 3 health polls in a row"), failed
        misses = [e["misses"] for e in pool.log_events() if e.get("action") == "health_miss"]
        assert misses == [1, 2, 3]
        assert pool.wait_exit_code(wid)["exit_code"] == -signal.SIGKILL


def test_a_stop_escalates_to_sigkill_when_the_worker_ignores_shutdown_and_sigterm():
    with start_pool("--shutdown-grace", "1", pool_id="esc") as pool:
        wid = pool.start_worker()["worker_id"]
        pid = pool.wait_status(wid, "ready")["pid"]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        assert pool.post("/v2/workers/stop", {"worker_id": wid}).status_code == 202
        stopped = pool.wait_status(wid, {"stopped", "failed"}, timeout_s=15)
        elapsed = time.monotonic() - t0
        assert stopped["status"] == "stopped", stopped
        assert stopped["exit_code"] == -signal.SIGKILL and stopped["stopped_by"] == "SIGKILL"
        steps = [e["step"] for e in pool.log_events() if e.get("action") == "stop_step"]
        assert steps == ["shutdown", "SIGTERM", "SIGKILL"], steps
        # /shutdown's answer (up to 1 s) + grace 1 s + kill-after 2 s, and some slack
        assert 2.5 < elapsed < 8, elapsed


def test_a_pool_killed_with_sigkill_takes_its_workers_down():
    with start_pool(pool_id="orphan") as pool:
        wid = pool.start_worker()["worker_id"]
        pid = pool.wait_status(wid, "ready")["pid"]
        pool.proc.kill()
        pool.proc.wait(timeout=10)
        deadline = time.monotonic() + 15  # PR_SET_PDEATHSIG sends SIGTERM: the worker drains
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # An orphan is reparented and reaped by init (or a subreaper); a zombie counts as gone.
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    break
            assert time.monotonic() < deadline, "the worker outlived its pool"
            time.sleep(0.1)
