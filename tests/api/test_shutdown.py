"""POST /shutdown (W-1340) in-process: 202 every time, new work 503 at once, the running job
may finish until the deadline, the engine is closed, a disconnect during the drain is a cancel."""

from __future__ import annotations

import threading

import trio

from tests.actors.fakes import (
    EventReader,
    Script,
    disconnect_after,
    expected_text,
    running_worker,
    text_of,
)
from tests.actors.fakes import wait_until as until


async def test_shutdown_is_202_and_idempotent_and_the_running_job_finishes():
    gate = threading.Event()
    gate.set()
    async with running_worker(Script(step_gate=gate, step_delay_s=0.002)) as h:
        events = {}

        async def run():
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "j", "prompt": "a", "max_tokens": 40}
            ) as response:
                events["j"] = await EventReader(response).rest()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await until(lambda: h.engines and h.engine.steps >= 2)
                gate.clear()  # the job waits inside a step: the drain must wait for it
                first = await h.client.post("/shutdown")
                assert first.status_code == 202
                assert first.json() == {
                    "status": "draining",
                    "first_request": True,
                    "deadline_s": 5.0,
                }
                again = await h.client.post("/shutdown", json={"anything": 1})
                assert again.status_code == 202 and again.json()["first_request"] is False
                refused = await h.client.post("/execute", json={"job_id": "late", "prompt": "a"})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "DRAINING"
                health = await h.client.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "draining"
                assert not h.worker.stopped.is_set()
                gate.set()
            await until(h.worker.stopped.is_set)
        done = events["j"]
        assert done[-1].event == "end" and text_of(done) == expected_text("a", 40)
        assert h.engine.closed
        actions = h.actions()
        assert actions.count("shutdown_requested") == 1 and "shutdown_requested_again" in actions
        assert actions.index("shutdown_requested") < actions.index("engine_closed")


async def test_a_client_that_disconnects_during_the_drain_is_cancelled_and_the_drain_ends():
    async with running_worker(Script(step_delay_s=0.01), shutdown_deadline_s=30.0) as h:
        base = str(h.client.base_url)
        body = {"job_id": "gone", "prompt": "a", "max_tokens": 500}

        async def leave_after_shutdown():
            # Read a few tokens, ask for the shutdown, read a few more, then hang up.
            async def shutdown_soon():
                await until(lambda: h.engines and h.engine.steps >= 3)
                assert (await h.client.post("/shutdown")).status_code == 202

            async with trio.open_nursery() as nursery:
                nursery.start_soon(shutdown_soon)
                await disconnect_after(base, body, b"event: token", 10)

        with trio.fail_after(10):
            t0 = trio.current_time()
            await leave_after_shutdown()
            await until(h.worker.stopped.is_set)
            waited = trio.current_time() - t0
        assert waited < 5  # the disconnect ended the job; the 30 s deadline was never needed
        (end,) = [e for e in h.narration() if e["action"] == "execute_end"]
        assert end["code"] == "CANCELLED" and "disconnected" in end["detail"]
        assert h.engine.closed


async def test_a_shutdown_while_idle_stops_at_once():
    async with running_worker() as h:
        with trio.fail_after(5):
            t0 = trio.current_time()
            assert (await h.client.post("/shutdown")).status_code == 202
            await until(h.worker.stopped.is_set)
            assert trio.current_time() - t0 < 2.0
        assert h.engine.closed
        assert h.worker.service.shutdown_reason == "POST /shutdown"
