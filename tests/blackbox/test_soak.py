"""REL-11: a short mixed soak over raw sockets: every kind of client at once, then nothing stuck.

Clients that stream to the end, hang up at once, half-close, drop mid-stream, cancel, send
broken or unknown-field bodies, trickle their body past the limit, speak HTTP/1.0, pipeline or
send the wrong key, all concurrently against one worker (fake engine, real hypercorn) for a few
seconds. Afterwards no job, reservation or stream is left, the next job runs at once, every
connection that was told to close is closed, and memory is flat: the second half of the soak
grows RSS by less than a few MiB over the first (a leak per request would show as tens).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from pathlib import Path

import trio

from tests.actors.fakes import Script, running_worker, wait_until
from tests.blackbox.rawhttp import RawConnection, request_bytes
from tests.blackbox.test_abandoned_jobs import first_token_after, quiet

KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUND_S = 3.0
CLIENTS = 12
RSS_SLACK_BYTES = 8 * 1024 * 1024


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def execute(job_id: str, max_tokens: int, **headers: str) -> bytes:
    body = {"job_id": job_id, "prompt": "abcdefgh" * 8, "max_tokens": max_tokens}
    return b"".join(request_bytes("POST", "/execute", body, headers={**AUTH, **headers}))


async def one_client(base: str, kind: str, job_id: str, counts: dict) -> None:
    """One attack; errors of the client's own making (a reset) are fine, hangs are not."""
    counts[kind] = counts.get(kind, 0) + 1
    with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError, EOFError):
        async with await RawConnection.open(base) as conn:
            if kind == "full":
                await conn.send(execute(job_id, 20))
                response = await conn.read_response()
                assert response.status in (200, 503), response
            elif kind == "hang_up":
                await conn.send(execute(job_id, 300))
            elif kind == "half_close":
                await conn.send(execute(job_id, 300))
                await conn.half_close()
                await conn.closed_within(2)
            elif kind == "mid_stream":
                await conn.send(execute(job_id, 300))
                await conn.read_response(head_only=True)
                await trio.sleep(random.random() * 0.05)
            elif kind == "cancel":
                await conn.send(execute(job_id, 300))
                if (await conn.read_response(head_only=True)).status != 200:
                    return  # 503 BUSY: the queue is full, nothing to cancel
                async with await RawConnection.open(base) as other:
                    head, body = request_bytes("POST", "/cancel", {"job_id": job_id}, headers=AUTH)
                    await other.send(head + body)
                    assert (await other.read_response()).status in (202, 404)
                assert b"event: " in await conn.read_until(b"event: end", b"event: error")
            elif kind == "bad_body":
                head, _ = request_bytes("POST", "/execute", {}, headers=AUTH)
                body = random.choice([b"{", b"[]", json.dumps({"x" * 5000: 1}).encode()])
                head = head.replace(b"Content-Length: 2", f"Content-Length: {len(body)}".encode())
                await conn.send(head + body)
                assert (await conn.read_response()).status == 400
            elif kind == "trickle":
                head, body = request_bytes("POST", "/execute", {"job_id": job_id}, headers=AUTH)
                await conn.send(head + body[:3])
                response = await conn.read_response()
                assert response.status == 408 and response.closes
                assert await conn.closed_within(2)
            elif kind == "http10":
                await conn.send(execute(job_id, 5).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
                await conn.read_response()
                assert await conn.closed_within(2)
            elif kind == "no_key":
                await conn.send(b"".join(request_bytes("GET", "/metrics")))
                assert (await conn.read_response()).status == 401
            elif kind == "pipelined":
                await conn.send(b"".join(request_bytes("GET", "/health")) * 3)
                for _ in range(3):
                    assert (await conn.read_response()).status == 200


KINDS = [
    "full",
    "hang_up",
    "half_close",
    "mid_stream",
    "cancel",
    "bad_body",
    "trickle",
    "http10",
    "no_key",
    "pipelined",
]


async def soak_round(base: str, seconds: float, ids, counts: dict) -> None:
    async def client() -> None:
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            await one_client(base, random.choice(KINDS), f"s{next(ids)}", counts)

    async with trio.open_nursery() as nursery:
        for _ in range(CLIENTS):
            nursery.start_soon(client)


async def test_a_mixed_soak_leaves_nothing_stuck_and_memory_flat():
    random.seed(1234)
    script = Script(step_delay_s=0.002)
    async with running_worker(script, api_key=KEY, body_timeout_s=0.3, queue_size=4) as h:
        base, ids, counts = str(h.client.base_url), itertools.count(), {}
        await soak_round(base, ROUND_S, ids, counts)  # warm-up: caches, pools, first imports
        await wait_until(lambda: quiet(h.worker.service), timeout=5)
        before = rss_bytes()
        await soak_round(base, ROUND_S, ids, counts)
        await wait_until(lambda: quiet(h.worker.service), timeout=5)
        grown = rss_bytes() - before
        assert set(counts) == set(KINDS), counts
        assert sum(counts.values()) > 100, counts
        assert grown < RSS_SLACK_BYTES, f"RSS grew {grown} bytes over {counts}"
        assert not h.worker.scheduler.reserved and h.worker.service.open_streams == 0
        assert h.worker.executor.pending == 0
        assert await first_token_after(base, headers=AUTH) < 0.5
