"""Many jobs at once on one engine (issue 13): the step loop through real HTTP, fake engine.

With `--max-batch N`, up to N jobs decode together (one decode call for all), more wait in the
bounded queue, and beyond that a job gets 503 BUSY with Retry-After. A cancel or disconnect of
one job ends it within one step and frees its slot; the others' tokens do not change (the fake
engine's tokens depend on a slot's own sequence only, so any cross-talk would show). An error
in one job (VRAM_OOM in its prefill) ends that job only. Shutdown drains every running job.
"""

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
    wait_until,
)

PROMPTS = ["a", "bc", "def", "g", "hij", "k", "lm", "n"]  # 8 jobs, 8 different continuations


async def _run_all(h, jobs: dict[str, tuple[str, int]], results: dict) -> None:
    async def run(job_id, prompt, n):
        results[job_id] = await h.execute(job_id=job_id, prompt=prompt, max_tokens=n)

    async with trio.open_nursery() as nursery:
        for job_id, (prompt, n) in jobs.items():
            nursery.start_soon(run, job_id, prompt, n)


async def test_eight_jobs_decode_together_each_with_its_own_tokens():
    async with running_worker(Script(step_delay_s=0.005), max_batch=8) as h:
        results: dict = {}
        jobs = {f"j{i}": (p, 20 + i) for i, p in enumerate(PROMPTS)}
        with trio.fail_after(20):
            await _run_all(h, jobs, results)
        for job_id, (prompt, n) in jobs.items():
            assert results[job_id][-1].event == "end", results[job_id][-1]
            assert text_of(results[job_id]) == expected_text(prompt, n)
        assert max(h.engine.batch_sizes) >= 6  # they shared decode calls
        assert h.engine.steps < sum(n for _, n in jobs.values()) / 3
        health = (await h.client.get("/health")).json()
        assert health["running"] == health["queued"] == 0 and health["max_batch"] == 8


async def test_a_full_batch_queues_then_answers_busy_with_retry_after():
    gate = threading.Event()
    gate.set()
    # 2 ms a step and 200 tokens: the running pair is still running when the gate closes (at
    # full speed 50 tokens could end between two polls of `running`, and q1, q2 never queue).
    script = Script(step_gate=gate, step_delay_s=0.002)
    async with running_worker(script, max_batch=2, queue_size=2) as h:
        results: dict = {}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for job_id in ("r1", "r2"):
                    nursery.start_soon(_run_all, h, {job_id: ("a", 200)}, results)
                await wait_until(lambda: h.worker.service.stats().running == 2)
                gate.clear()  # the batch now waits inside a step
                for job_id in ("q1", "q2"):
                    nursery.start_soon(_run_all, h, {job_id: ("b", 3)}, results)
                await wait_until(lambda: h.worker.executor.pending == 2)
                health = (await h.client.get("/health")).json()
                assert (health["running"], health["queued"]) == (2, 2)
                text = (await h.client.get("/metrics")).text
                assert "vllm:num_requests_running{" in text
                gauges = {
                    line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("vllm:")
                }
                assert gauges["vllm:num_requests_running"] == 2
                assert gauges["vllm:num_requests_waiting"] == 2
                # the two running jobs' caches: 1 prompt token + the tokens decoded so far each
                kv = h.worker.executor.kv_tokens
                assert kv >= 2 * 2 and gauges["vllm:kv_cache_usage_perc"] == kv / (512 * 2)
                busy = await h.client.post(
                    "/execute", json={"job_id": "x", "prompt": "c", "max_tokens": 2}
                )
                assert busy.status_code == 503 and busy.json()["error"]["code"] == "BUSY"
                assert int(busy.headers["Retry-After"]) >= 1
                gate.set()
        for job_id in ("r1", "r2", "q1", "q2"):
            assert results[job_id][-1].event == "end"
        assert text_of(results["q1"]) == expected_text("b", 3)


async def test_cancel_one_of_eight_ends_it_within_a_step_and_changes_no_other():
    async with running_worker(Script(step_delay_s=0.01), max_batch=8) as h:
        results: dict = {}
        jobs = {f"j{i}": (p, 40) for i, p in enumerate(PROMPTS)}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _run_all, h, {k: v for k, v in jobs.items() if k != "j3"}, results
                )
                async with h.client.stream(
                    "POST", "/execute", json={"job_id": "j3", "prompt": "g", "max_tokens": 40}
                ) as response:
                    reader = EventReader(response)
                    events = await reader.take(4)  # started + 3 tokens
                    await wait_until(lambda: h.worker.service.stats().running == 8)
                    steps_at_cancel = h.engine.steps
                    assert (
                        await h.client.post("/cancel", json={"job_id": "j3"})
                    ).status_code == 202
                    events += await reader.rest()
                    steps_at_end = h.engine.steps
        assert events[-1].event == "error" and events[-1].data["code"] == "CANCELLED"
        assert steps_at_end <= steps_at_cancel + 2  # the step in flight, then it was gone
        for job_id, (prompt, n) in jobs.items():
            if job_id != "j3":
                assert results[job_id][-1].event == "end"
                assert text_of(results[job_id]) == expected_text(prompt, n)


async def test_disconnect_of_one_stream_frees_its_slot_for_a_queued_job():
    gate = threading.Event()
    gate.set()
    async with running_worker(Script(step_delay_s=0.005), max_batch=2, queue_size=4) as h:
        results: dict = {}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run_all, h, {"stay": ("a", 60)}, results)
                await wait_until(lambda: h.worker.service.stats().running == 1)
                body = {"job_id": "gone", "prompt": "b", "max_tokens": 400}
                nursery.start_soon(
                    disconnect_after, str(h.client.base_url), body, b"event: token", 3
                )
                await wait_until(lambda: h.worker.service.stats().running == 2)
                nursery.start_soon(_run_all, h, {"next": ("c", 5)}, results)  # waits for a slot
                await wait_until(lambda: "next" in results)
        assert results["next"][-1].event == "end"
        assert text_of(results["next"]) == expected_text("c", 5)
        assert results["stay"][-1].event == "end"
        assert text_of(results["stay"]) == expected_text("a", 60)
        ended = [e for e in h.narration() if e["action"] == "execute_end" and e["job_id"] == "gone"]
        assert len(ended) == 1 and ended[0].get("code", "CANCELLED") == "CANCELLED"


async def test_an_error_in_one_job_errors_that_job_only():
    async with running_worker(
        Script(step_delay_s=0.005, oom_token=ord("z") % 15), max_batch=4
    ) as h:
        results: dict = {}
        jobs = {"ok1": ("a", 12), "bad": ("z", 12), "ok2": ("bc", 12)}
        with trio.fail_after(20):
            await _run_all(h, jobs, results)
            after = await h.execute(job_id="later", prompt="d", max_tokens=4)  # still serving
        assert results["bad"][-1].event == "error" and results["bad"][-1].data["code"] == "VRAM_OOM"
        for job_id in ("ok1", "ok2"):
            assert results[job_id][-1].event == "end"
            assert text_of(results[job_id]) == expected_text(jobs[job_id][0], 12)
        assert text_of(after) == expected_text("d", 4)


async def test_shutdown_drains_every_running_job():
    async with running_worker(
        Script(step_delay_s=0.005), max_batch=8, shutdown_deadline_s=5.0
    ) as h:
        results: dict = {}
        jobs = {f"j{i}": (p, 30) for i, p in enumerate(PROMPTS[:5])}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run_all, h, jobs, results)
                await wait_until(lambda: h.worker.service.stats().running == 5)
                nursery.start_soon(h.worker.shutdown, "test drain")
        for job_id, (prompt, n) in jobs.items():  # every running job finished within the deadline
            assert results[job_id][-1].event == "end"
            assert text_of(results[job_id]) == expected_text(prompt, n)
        assert h.engine.closed
