"""REL-11: the bounded hypothesis run over request bodies, through the real HTTP stack.

REL-5's property (`tests/api/test_validation_property.py`) checks the validator alone; this one
sends the same bodies, and raw bytes, over a socket to a whole worker (fake engine, real
hypercorn, every ASGI layer) and checks what a client sees: a well-formed SSE stream or a JSON
refusal with a stable code, never a 500, a hang or a connection left in a bad state; and that
nothing is left running afterwards.
"""

from __future__ import annotations

import json
import queue
import threading

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from api.sse import parse_stream
from runtime.errors import ErrorCode
from tests.actors.fakes import Script, running_worker, wait_until
from tests.api.test_validation_property import BOUNDED, bodies
from tests.blackbox.test_abandoned_jobs import quiet

STATUSES = {200, 400, 404, 409, 413, 503}
CODES = {str(code) for code in ErrorCode}


@pytest.fixture(scope="module")
def worker():
    """A whole worker in a thread of its own (hypothesis drives it from this one)."""
    started: queue.Queue = queue.Queue()
    stop = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        async with running_worker(Script(), max_context=4096) as h:
            started.put((str(h.client.base_url), h))
            await trio.to_thread.run_sync(stop.wait)
            await wait_until(lambda: quiet(h.worker.service), timeout=5)

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as error:  # reported by the fixture's teardown
            failure.append(error)
            started.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    got = started.get(timeout=60)
    assert got is not None, failure
    base, harness = got
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client, harness
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and not failure, failure


def check_answer(response: httpx.Response) -> None:
    assert response.status_code in STATUSES, (response.status_code, response.text[:300])
    if response.status_code == 200:
        events = parse_stream(response.content)  # grammar: started, tokens, one terminal
        assert events[-1].event in ("end", "error")
        return
    error = response.json()["error"]
    assert error["code"] in CODES and isinstance(error["message"], str)
    assert len(response.content) < 2048  # nothing the client sent is echoed at length


@settings(BOUNDED, max_examples=80)
@given(bodies)
def test_any_json_body_over_http_is_a_stream_or_a_coded_refusal(worker, body):
    client, _ = worker
    if isinstance(body, dict) and body.get("max_tokens") is None:
        body = {**body, "max_tokens": 2}  # keep the valid ones short
    check_answer(client.post("/execute", content=json.dumps(body, allow_nan=True)))


@settings(BOUNDED, max_examples=60)
@given(st.sampled_from(["/execute", "/cancel", "/shutdowns", "/v1/x"]), st.binary(max_size=64))
def test_any_bytes_over_http_are_a_coded_refusal(worker, path, raw):
    client, harness = worker
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    check_answer(response)
    assert not harness.worker.service.shutdown_requested.is_set()
