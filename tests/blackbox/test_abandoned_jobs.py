"""REL-1: a client that sends /execute and leaves never leaves its job running, at any stage.

Over raw sockets against a whole worker (fake engine, real hypercorn): the client closes the
socket, or shuts down its write side, while its request is read, tokenized, queued behind
another job, or streamed. Before the fix, a hang-up that came before the response generator
started (the handler awaiting the tokenizer thread) left the job running to max_tokens,
holding the executor (the black-box soak: 29 of 38 immediate hang-ups ran to completion).
"""

from __future__ import annotations

import threading
import time

import pytest
import trio

from actors.jobs import JobState
from tests.actors.fakes import Script, running_worker, wait_until
from tests.blackbox.rawhttp import RawConnection, request_bytes

MAX_TOKENS = 400
STEP_S = 0.005  # a job left running takes MAX_TOKENS * STEP_S = 2 s
LEAVES = ["close", "half_close"]


def quiet(service) -> bool:
    live = service.scheduler.live.values()
    return (
        not service.scheduler.reserved
        and service.open_streams == 0
        and all(h.state is JobState.DONE for h in live)
    )


def execute(job_id: str, max_tokens: int = MAX_TOKENS, headers: dict | None = None) -> bytes:
    head, body = request_bytes(
        "POST",
        "/execute",
        {"job_id": job_id, "prompt": "abc", "max_tokens": max_tokens},
        headers=headers,
    )
    return head + body


async def leave(conn: RawConnection, how: str) -> None:
    await (conn.hang_up() if how == "close" else conn.half_close())


async def first_token_after(base_url: str, headers: dict | None = None) -> float:
    """Seconds until the first token of a fresh short job (the executor is free if small)."""
    t0 = time.perf_counter()
    async with await RawConnection.open(base_url) as conn:
        await conn.send(execute(f"next-{t0}", max_tokens=3, headers=headers))
        await conn.read_response(head_only=True)
        while b"event: token" not in conn.buffer:
            assert await conn.more(), "the stream ended before a token"
    return time.perf_counter() - t0


@pytest.mark.parametrize("how", LEAVES)
async def test_a_client_that_leaves_at_once_has_its_job_cancelled(how):
    async with running_worker(Script(step_delay_s=STEP_S)) as h:
        for attempt in range(6):
            conn = await RawConnection.open(str(h.client.base_url))
            await conn.send(execute(f"{how}-{attempt}"))
            await leave(conn, how)
            with trio.fail_after(1.0):  # a job run to the end would take 2 s
                await trio.sleep(0.02)
                await wait_until(lambda: quiet(h.worker.service), timeout=1.0)
            await conn.hang_up()
        # None ran to its end (cancelled, or never submitted when the hang-up came first).
        assert h.worker.service.metrics.requests["success"] == 0
        assert h.engine.steps < 6 * MAX_TOKENS // 8
        assert await first_token_after(str(h.client.base_url)) < 0.5


@pytest.mark.parametrize("how", LEAVES)
async def test_a_client_that_leaves_while_its_prompt_is_tokenized_leaves_no_job(how):
    """The hang-up lands while the handler waits for the tokenizer thread (no response yet)."""
    gate = threading.Event()
    async with running_worker(Script(step_delay_s=STEP_S, encode_gate=gate)) as h:
        conn = await RawConnection.open(str(h.client.base_url))
        await conn.send(execute("tok"))
        await wait_until(lambda: "tok" in h.worker.scheduler.reserved, timeout=2)
        await leave(conn, how)
        await trio.sleep(0.05)  # hypercorn sees the close, the handler is cancelled
        gate.set()
        await wait_until(lambda: quiet(h.worker.service), timeout=1.0)
        await conn.hang_up()
        assert h.engine.steps < MAX_TOKENS // 8
        assert h.worker.service.metrics.requests["success"] == 0


@pytest.mark.parametrize("how", LEAVES)
async def test_a_client_that_leaves_while_queued_never_runs(how):
    # One slot, so the second job waits in the queue behind the first.
    async with running_worker(Script(step_delay_s=STEP_S), max_batch=1) as h:
        base = str(h.client.base_url)
        first = await RawConnection.open(base)
        await first.send(execute("first", max_tokens=40))
        await first.read_response(head_only=True)
        conn = await RawConnection.open(base)
        await conn.send(execute("queued"))
        await wait_until(lambda: "queued" in h.worker.scheduler.live, timeout=2)
        handle = h.worker.scheduler.live["queued"]
        assert handle.state is JobState.QUEUED
        await leave(conn, how)
        with trio.fail_after(1.0):
            await handle.done.wait()
        assert handle.outcome.code == "CANCELLED"
        assert handle.outcome.message == "the client disconnected"
        assert h.engine.steps <= 40  # only the first job's steps
        await first.hang_up()
        await conn.hang_up()


@pytest.mark.parametrize("how", LEAVES)
async def test_a_client_that_leaves_mid_stream_is_cancelled_at_once(how):
    async with running_worker(Script(step_delay_s=STEP_S)) as h:
        conn = await RawConnection.open(str(h.client.base_url))
        await conn.send(execute("mid"))
        await conn.read_response(head_only=True)
        await wait_until(lambda: h.engine.steps >= 5, timeout=2)
        handle = h.worker.scheduler.live["mid"]
        await leave(conn, how)
        with trio.fail_after(1.0):
            await handle.done.wait()
        assert handle.outcome.code == "CANCELLED"
        assert h.engine.steps < MAX_TOKENS // 4
        await conn.hang_up()
