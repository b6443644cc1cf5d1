"""REL-3 and REL-4: connections close when HTTP says so; slow bodies get 408 and a close.

Over raw sockets against a whole worker (fake engine, real hypercorn). Before the guard
(api/guard.py), HTTP/1.0 and `Connection: close` requests to Quart routes stayed open after
their response (hypercorn's close ran inside the app's last send, which quart-trio cancelled:
hypercorn #330), and a 404 answered before its body arrived left the keep-alive connection
stuck, so the next request on it never got an answer.
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
import trio

import actors.http
from tests.actors.fakes import Script, running_worker, wait_until
from tests.blackbox.rawhttp import RawConnection, request_bytes
from tests.blackbox.test_abandoned_jobs import execute

CLOSE_S = 1.0  # a connection that is to close must be closed this soon after the response


def cases() -> list[tuple[str, tuple[bytes, bytes]]]:
    run = {"prompt": "abc", "max_tokens": 3}
    return [
        ("execute 1.0", request_bytes("POST", "/execute", {"job_id": "a", **run}, version="1.0")),
        (
            "execute close",
            request_bytes(
                "POST", "/execute", {"job_id": "b", **run}, headers={"Connection": "close"}
            ),
        ),
        ("cancel 1.0", request_bytes("POST", "/cancel", {"job_id": "b"}, version="1.0")),
        (
            "cancel close",
            request_bytes("POST", "/cancel", {"job_id": "b"}, headers={"Connection": "close"}),
        ),
        ("health 1.0", request_bytes("GET", "/health", version="1.0")),
        ("metrics close", request_bytes("GET", "/metrics", headers={"Connection": "close"})),
        ("404 1.0", request_bytes("POST", "/nowhere", {"x": 1}, version="1.0")),
    ]


async def test_http_1_0_and_connection_close_end_the_connection():
    async with running_worker(Script(step_delay_s=0.001)) as h:
        for name, (head, body) in cases():
            async with await RawConnection.open(str(h.client.base_url)) as conn:
                await conn.send(head + body)
                with trio.fail_after(3):
                    response = await conn.read_response(head_only=True)
                assert response.closes, (name, response.headers)
                assert await conn.closed_within(CLOSE_S), f"{name}: still open"


async def test_keep_alive_still_works_for_http_1_1():
    async with running_worker() as h, await RawConnection.open(str(h.client.base_url)) as conn:
        for _ in range(3):
            await conn.send(b"".join(request_bytes("GET", "/health")))
            with trio.fail_after(3):
                assert (await conn.read_response()).status == 200
        await conn.send(execute("kept", max_tokens=3))
        with trio.fail_after(3):
            response = await conn.read_response()
        assert response.status == 200 and b"event: end" in response.body
        assert not response.closes


@pytest.mark.parametrize("path", ["/nowhere", "/execute", "/cancel"])
async def test_a_body_in_a_second_write_never_hangs_the_connection(path):
    """The response may come before the body (404): then it closes, never leaves it stuck."""
    async with running_worker() as h, await RawConnection.open(str(h.client.base_url)) as conn:
        head, body = request_bytes("POST", path, {"job_id": "split", "prompt": "a"})
        await conn.send(head)
        await trio.sleep(0.05)
        with contextlib.suppress(trio.BrokenResourceError):
            await conn.send(body)  # the server may have answered (404) and closed: allowed
        with trio.fail_after(3):
            first = await conn.read_response()
        if first.closes:
            assert await conn.closed_within(CLOSE_S)
        else:
            await conn.send(b"".join(request_bytes("GET", "/health")))
            with trio.fail_after(3):
                assert (await conn.read_response()).status == 200


async def test_a_trickled_body_gets_408_and_a_close_within_the_limit():
    async with running_worker(body_timeout_s=0.5) as h:
        async with await RawConnection.open(str(h.client.base_url)) as conn:
            head, body = request_bytes("POST", "/execute", execute_body := {"job_id": "slow"})
            assert execute_body
            await conn.send(head)
            t0 = time.perf_counter()
            with trio.fail_after(3):
                async with trio.open_nursery() as nursery:

                    async def trickle() -> None:
                        for byte in body:
                            await conn.send(bytes([byte]))
                            await trio.sleep(0.1)

                    nursery.start_soon(trickle)
                    response = await conn.read_response()
                    nursery.cancel_scope.cancel()
            elapsed = time.perf_counter() - t0
            assert response.status == 408
            assert response.json()["error"]["code"] == "REQUEST_TIMEOUT"
            assert response.closes
            assert 0.4 < elapsed < 1.5
            assert await conn.closed_within(CLOSE_S)
        # The worker goes on serving others.
        assert (await h.client.get("/health")).status_code == 200


async def test_a_body_that_arrives_in_time_is_served():
    async with (
        running_worker(body_timeout_s=0.5) as h,
        await RawConnection.open(str(h.client.base_url)) as conn,
    ):
        head, body = request_bytes("POST", "/cancel", {"job_id": "none"})
        await conn.send(head)
        for piece in (body[:5], body[5:]):
            await trio.sleep(0.1)
            await conn.send(piece)
        with trio.fail_after(3):
            assert (await conn.read_response()).status == 404  # no such job: it was read


async def test_a_reader_that_stops_reading_is_dropped_after_the_write_timeout(monkeypatch):
    """REL-4: the client reads nothing; after --write-timeout without progress the kernel fails
    hypercorn's write, and the job is cancelled like any disconnect (before: held for ever)."""
    tune = actors.http.tune_listening_socket

    def small_buffers(sock, write_timeout_s):  # fill the pipe with a few KiB, not megabytes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tune(sock, write_timeout_s)

    monkeypatch.setattr(actors.http, "tune_listening_socket", small_buffers)
    async with running_worker(Script(step_delay_s=0.01), write_timeout_s=1.0) as h:
        host, port = str(h.client.base_url).removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((host, int(port)))
        with sock:
            await sock.send(execute("stalled", max_tokens=500))
            await wait_until(lambda: "stalled" in h.worker.scheduler.live, timeout=2)
            handle = h.worker.scheduler.live["stalled"]
            with trio.fail_after(4.5):  # 5 s to run to the end; blocked after ~1-2 s, +1 s
                await handle.done.wait()
            assert handle.outcome.code == "CANCELLED", handle.outcome
            await wait_until(lambda: h.worker.service.open_streams == 0, timeout=1)
