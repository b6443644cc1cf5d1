"""REL-1: a client that sends /execute and leaves at once never leaves its job running.

Over raw sockets against a whole worker (fake engine, real hypercorn): the request goes out in
one write and the client closes the socket, or shuts down its write side, immediately. Before
the fix the response generator had not started when the disconnect arrived, so nothing closed
the job's stream and the job ran to max_tokens, holding the executor (the black-box soak: 29 of
38 immediate hang-ups ran to completion).
"""

from __future__ import annotations

import time

import pytest
import trio

from actors.jobs import JobState
from tests.actors.fakes import Script, running_worker, wait_until
from tests.blackbox.rawhttp import RawConnection, request_bytes

MAX_TOKENS = 400
STEP_S = 0.005  # a job left running would take MAX_TOKENS * STEP_S = 2 s


def quiet(service) -> bool:
    live = service.scheduler.live.values()
    return (
        not service.scheduler.reserved
        and service.open_streams == 0
        and all(h.state is JobState.DONE for h in live)
    )


@pytest.mark.parametrize("leave", ["close", "half_close"])
async def test_a_client_that_leaves_at_once_has_its_job_cancelled(leave):
    async with running_worker(Script(step_delay_s=STEP_S)) as h:
        base = str(h.client.base_url)
        for attempt in range(4):
            job_id = f"{leave}-{attempt}"
            steps_before = h.engine.steps
            head, body = request_bytes(
                "POST", "/execute", {"job_id": job_id, "prompt": "abc", "max_tokens": MAX_TOKENS}
            )
            conn = await RawConnection.open(base)
            await conn.send(head + body)
            if leave == "close":
                await conn.hang_up()
            else:
                await conn.half_close()
            await wait_until(lambda: job_id in h.worker.scheduler.live, timeout=2)
            handle = h.worker.scheduler.live[job_id]
            with trio.fail_after(1.0):  # it would take 2 s to run to the end
                await handle.done.wait()
            await wait_until(lambda: quiet(h.worker.service), timeout=1)
            assert handle.outcome.code == "CANCELLED", handle.outcome
            assert handle.outcome.message == "the client disconnected"
            assert h.engine.steps - steps_before < MAX_TOKENS // 4
            await conn.hang_up()
        # The executor is free: the next request's first token comes at once.
        t0 = time.perf_counter()
        async with h.client.stream(
            "POST", "/execute", json={"job_id": "next", "prompt": "abc", "max_tokens": 3}
        ) as response:
            async for chunk in response.aiter_bytes():
                if b"event: token" in chunk:
                    break
        assert time.perf_counter() - t0 < 0.5
        assert h.worker.service.metrics.requests["cancelled"] == 4


async def test_a_client_that_leaves_while_its_prompt_is_tokenized_leaves_no_job():
    """The disconnect lands while the handler waits for the tokenizer thread: no job remains."""
    import threading

    gate = threading.Event()
    async with running_worker(Script(step_delay_s=STEP_S, encode_gate=gate)) as h:
        head, body = request_bytes(
            "POST", "/execute", {"job_id": "tok", "prompt": "abc", "max_tokens": MAX_TOKENS}
        )
        conn = await RawConnection.open(str(h.client.base_url))
        await conn.send(head + body)
        await wait_until(lambda: "tok" in h.worker.scheduler.reserved, timeout=2)
        await conn.hang_up()
        await trio.sleep(0.05)  # hypercorn sees the close, the handler is cancelled
        gate.set()
        await wait_until(lambda: quiet(h.worker.service), timeout=2)
        assert h.engine.steps < MAX_TOKENS // 4
