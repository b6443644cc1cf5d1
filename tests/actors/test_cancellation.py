"""Every way a job can be cancelled, through real HTTP against a whole worker (fake engine).

Protocol: POST /cancel answers 202 for a queued or running job, and the stream ends with one
`error` CANCELLED within one decode step (between prefill chunks too); again: 202, same outcome;
after the end: 202, nothing changes; unknown: 404. A cancelled queued job never starts. A client
that disconnects stops its job within a step, and the next request is served normally.
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


async def cancel(h, job_id: str) -> int:
    response = await h.client.post("/cancel", json={"job_id": job_id})
    return response.status_code


def cancelled(events) -> bool:
    last = events[-1]
    return (
        last.event == "error"
        and last.data["code"] == "CANCELLED"
        and last.data["retriable"] is False
    )


async def test_cancel_queued_job_never_starts():
    gate = threading.Event()
    async with running_worker(Script(prefill_gate=gate)) as h:
        results = {}

        async def run(job_id: str) -> None:
            results[job_id] = await h.execute(job_id=job_id, prompt="abc", max_tokens=3)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "first")
                await wait_until(
                    lambda: h.engines and h.engine.threads and "first" in h.worker.scheduler.live
                )
                await wait_until(lambda: h.worker.executor.pending == 0)  # "first" is running
                nursery.start_soon(run, "queued")
                await wait_until(lambda: "queued" in h.worker.scheduler.live)
                assert await cancel(h, "queued") == 202
                await wait_until(lambda: "queued" in results)
                assert [e.event for e in results["queued"]] == ["error"]
                assert cancelled(results["queued"])
                gate.set()
        assert results["first"][-1].event == "end"
        starts = [e["job_id"] for e in h.narration() if e["action"] == "execute_start"]
        assert starts == ["first"]
        assert h.engine.prefill_calls == 1  # only "first" ever reached the engine


async def test_cancel_during_prefill_stops_between_chunks():
    gate = threading.Event()
    prompt = "abcdefghij" * 60  # 600 tokens: three prefill chunks of up to 256
    async with running_worker(Script(prefill_gate=gate), max_context=1024) as h:
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "p", "prompt": prompt, "max_tokens": 4}
            ) as response:
                reader = EventReader(response)
                first = await reader.take(1)
                assert first[0].event == "started"
                assert await cancel(h, "p") == 202
                gate.set()  # the engine finishes the chunk it is in, then must stop
                events = first + await reader.rest()
        assert [e.event for e in events] == ["started", "error"]
        assert cancelled(events)
        assert h.engine.prefill_calls == 1
        assert h.engine.steps == 0


async def test_cancel_mid_decode_within_one_step():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "d", "prompt": "a", "max_tokens": 500}
            ) as response:
                reader = EventReader(response)
                events = await reader.take(4)  # started + 3 tokens
                assert await cancel(h, "d") == 202
                steps_at_cancel = h.engine.steps
                events += await reader.rest()
        assert cancelled(events)
        tokens = [e for e in events if e.event == "token"]
        # When /cancel answered, `steps_at_cancel` steps were done and at most one more was in
        # flight; the token sampled before that step may still come, nothing after it.
        assert tokens[-1].data["i"] <= steps_at_cancel + 1
        assert h.engine.steps <= steps_at_cancel + 1
        steps = h.engine.steps
        await trio.sleep(0.1)
        assert h.engine.steps == steps  # nothing runs on after the terminal event


async def test_cancel_twice_same_outcome_and_one_terminal_event():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", "/execute", json={"job_id": "t", "prompt": "a", "max_tokens": 500}
            ) as response:
                reader = EventReader(response)
                events = await reader.take(2)
                assert await cancel(h, "t") == 202
                assert await cancel(h, "t") == 202
                events += await reader.rest()
                assert await cancel(h, "t") == 202  # finished by now: still 202
        assert cancelled(events)
        assert sum(e.event in ("end", "error") for e in events) == 1
        assert [e["job_id"] for e in h.narration() if e["action"] == "cancel"] == ["t"]


async def test_cancel_after_end_changes_nothing():
    async with running_worker() as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="done", prompt="abc", max_tokens=3)
            assert events[-1].event == "end"
            assert await cancel(h, "done") == 202
            assert "cancel" not in h.actions()
            health = (await h.client.get("/health")).json()
            assert health["status"] == "ready"
            again = await h.execute(job_id="done", prompt="abc", max_tokens=3)  # id reusable
        assert text_of(again) == text_of(events)


async def test_cancel_unknown_job_is_404():
    async with running_worker() as h:
        response = await h.client.post("/cancel", json={"job_id": "never-seen"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
        response = await h.client.post("/cancel", json={"job_id": "bad id!"})
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "job_id"


async def test_client_disconnect_stops_generation_and_next_request_is_served():
    async with running_worker(Script(step_delay_s=0.05)) as h:
        with trio.fail_after(10):
            body = {"job_id": "gone", "prompt": "a", "max_tokens": 500}
            seen = await disconnect_after(str(h.client.base_url), body, b"event: token", 3)
            steps_at_disconnect = h.engine.steps  # the socket is closed now
            assert seen.startswith(b"HTTP/1.1 200")
            await wait_until(lambda: "gone" not in h.worker.scheduler.live)
            steps = h.engine.steps
            # As for /cancel: the step in flight at the disconnect may finish, nothing after it.
            assert steps <= steps_at_disconnect + 1, (steps_at_disconnect, steps)
            await trio.sleep(0.1)
            assert h.engine.steps == steps
            ends = [e for e in h.narration() if e["action"] == "execute_end"]
            assert ends[-1]["job_id"] == "gone" and ends[-1]["code"] == "CANCELLED"
            events = await h.execute(job_id="next", prompt="abc", max_tokens=3)
        assert events[-1].event == "end"


async def test_client_disconnect_while_queued_never_starts():
    gate = threading.Event()
    async with running_worker(Script(prefill_gate=gate)) as h:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: h.execute(job_id="head", prompt="a", max_tokens=2))
                await wait_until(
                    lambda: "head" in h.worker.scheduler.live and h.worker.executor.pending == 0
                )
                with trio.move_on_after(0.2):
                    await h.execute(job_id="impatient", prompt="a", max_tokens=2)
                await wait_until(lambda: "impatient" not in h.worker.scheduler.live)
                gate.set()
        starts = [e["job_id"] for e in h.narration() if e["action"] == "execute_start"]
        assert starts == ["head"]


async def test_a_cancelled_queued_job_frees_its_queue_slot_at_once():
    # queue_size 1: "long" runs (held in its first decode step), "queued" waits, is cancelled;
    # the slot is free again although the thread has not yet skipped the cancelled handle.
    gate = threading.Event()
    async with running_worker(Script(step_gate=gate), queue_size=1) as h:
        results = {}

        async def run(job_id: str) -> None:
            results[job_id] = await h.execute(job_id=job_id, prompt="abc", max_tokens=3)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "long")
                await wait_until(
                    lambda: "long" in h.worker.scheduler.live and h.worker.executor.pending == 0
                )
                nursery.start_soon(run, "queued")
                await wait_until(lambda: "queued" in h.worker.scheduler.live)
                busy = await h.client.post("/execute", json={"job_id": "x", "prompt": "a"})
                assert busy.status_code == 503 and busy.json()["error"]["code"] == "BUSY"
                assert await cancel(h, "queued") == 202
                await wait_until(lambda: "queued" in results)
                assert cancelled(results["queued"])
                assert h.worker.executor.pending == 0  # nothing waits
                nursery.start_soon(run, "next")  # not 503 BUSY
                await wait_until(lambda: "next" in h.worker.scheduler.live)
                assert h.worker.executor.pending == 1
                gate.set()
        assert results["long"][-1].event == "end"
        assert results["next"][-1].event == "end" and text_of(results["next"]) == expected_text(
            "abc", 3
        )
        assert h.worker.executor.pending == 0  # the skipped handle was not counted twice
        starts = [e["job_id"] for e in h.narration() if e["action"] == "execute_start"]
        assert starts == ["long", "next"]


async def test_cancel_while_the_prompt_is_tokenized_ends_the_job_before_it_queues():
    gate = threading.Event()  # tokenizing takes a while (a long prompt on a busy machine)
    async with running_worker(Script(encode_gate=gate)) as h:
        results = {}

        async def run(job_id: str) -> None:
            results[job_id] = await h.execute(job_id=job_id, prompt="abc", max_tokens=3)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "tok")
                await wait_until(lambda: "tok" in h.worker.scheduler.reserved)
                assert await cancel(h, "tok") == 202  # found, although not queued yet
                assert await cancel(h, "tok") == 202
                dup = await h.client.post("/execute", json={"job_id": "tok", "prompt": "a"})
                assert dup.status_code == 409  # the id is taken while it is tokenized
                gate.set()
            assert [e.event for e in results["tok"]] == ["error"]
            assert cancelled(results["tok"])
            assert not h.worker.scheduler.reserved and "tok" not in h.worker.scheduler.live
            assert await cancel(h, "tok") == 202  # finished: accepted, nothing changes
            assert h.worker.executor.pending == 0
            events = await h.execute(job_id="after", prompt="abc", max_tokens=3)
        assert events[-1].event == "end"
        assert h.engine.prefill_calls == 1  # only "after" reached the engine
        cancels = [e for e in h.narration() if e["action"] == "cancel"]
        assert [(e["job_id"], e["job_state"]) for e in cancels] == [("tok", "admitting")]
