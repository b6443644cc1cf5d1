"""The lifecycle's transitions, the memory accounting of a record, and the event stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pool_managerd.events import SUBSCRIBER_BUFFER, EventBus, encode_sse
from pool_managerd.state import NEXT, BadTransition, WorkerRecord, WorkerStatus
from tests.e2e.conftest import parse_sse

S = WorkerStatus


def record(**kw) -> WorkerRecord:
    return WorkerRecord(id="w", model_ref="m", path=Path("/m.gguf"), gpu="cpu",
                        reserved_bytes=1000, max_context=64, **kw)  # fmt: skip


def test_statuses_are_the_lifecycle_ones():
    assert [str(s) for s in S] == ["starting", "ready", "draining", "stopping", "stopped", "failed"]


def test_every_forbidden_transition_is_refused():
    paths = {
        (S.STARTING, S.READY), (S.STARTING, S.STOPPING), (S.STARTING, S.FAILED),
        (S.READY, S.DRAINING), (S.READY, S.STOPPING), (S.READY, S.FAILED),
        (S.DRAINING, S.STOPPING), (S.DRAINING, S.FAILED), (S.STOPPING, S.STOPPED),
    }  # fmt: skip
    assert {(a, b) for a, nexts in NEXT.items() for b in nexts} == paths
    for old in S:
        for new in S:
            r = record(status=old)
            if (old, new) in paths:
                assert r.move(new) is old and r.status is new
            else:
                with pytest.raises(BadTransition):
                    r.move(new)
                assert r.status is old


def test_memory_is_accounted_while_the_process_lives():
    r = record()
    assert r.accounted_bytes == 1000  # reserved at admission
    r.vram_used = 800  # the worker's own figure, once it called back
    assert r.accounted_bytes == 800
    r.move(S.FAILED, reason="missed polls")
    assert r.accounted_bytes == 800  # failed but still being killed: still holds it
    r.alive = False
    assert r.accounted_bytes == 0 and r.to_json()["vram_used"] == 0
    assert r.to_json()["last_log_lines"] == []


def test_log_tail_keeps_the_last_lines():
    r = record(log_tail_lines=3)
    for i in range(10):
        r.log_tail.append(f"line {i}")
    r.move(S.FAILED)
    assert r.to_json()["last_log_lines"] == ["line 7", "line 8", "line 9"]


def test_sse_framing_survives_newlines():
    raw = encode_sse({"type": "worker_status", "seq": 3, "reason": "a\nb\r\n\nc"})
    assert raw.count(b"\n\n") == 1 and raw.startswith(b"id: 3\nevent: worker_status\n")
    ((name, data),) = parse_sse(raw.decode())
    assert name == "worker_status" and data["reason"] == "a\nb\r\n\nc"
    with pytest.raises(ValueError):
        encode_sse({"type": "made_up"})


async def test_a_slow_subscriber_is_dropped_with_overflow_and_others_keep_theirs():
    bus = EventBus()
    slow, fast = bus.subscribe(), bus.subscribe()
    got = []

    async def read_fast():
        async for event in fast.receive:
            got.append(event["seq"])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            for i in range(SUBSCRIBER_BUFFER + 5):
                bus.publish("worker_status", worker_id="w", status="ready")
                if i % 100 == 0:
                    await trio.sleep(0)  # let the fast reader keep up
            assert bus.subscribers == 1  # the slow one is gone, the pool never waited on it
            bus.close_all()
        assert got == list(range(1, SUBSCRIBER_BUFFER + 6))
        frames = [f async for f in bus.stream(slow, {"type": "snapshot", "seq": 0}, 10)]
    events = parse_sse(b"".join(frames).decode())
    assert [n for n, _ in events[:2]] == ["snapshot", "worker_status"]
    assert len(events) == 1 + SUBSCRIBER_BUFFER + 1 and events[-1][0] == "overflow"


async def test_worker_output_reaches_the_pools_log_tagged_with_the_worker(capsys):
    """POOL-P-5: a worker's own narration (it carries the worker's id) passes through as it is;
    anything else it prints (a traceback, another id's JSON) is wrapped in `worker_output`
    naming the worker; every non-blank line is in the record's tail; progress is kept."""
    import io
    import json

    from pool_managerd.config import PoolConfig
    from pool_managerd.inventory import Inventory
    from pool_managerd.pool import Pool
    from runtime.narration import Narrator

    log = io.StringIO()
    pool = Pool(PoolConfig(pool_id="p"), Inventory.cpu(), Narrator("p", stream=log))
    r = record()
    own = json.dumps({"worker_id": "w", "action": "model_load_progress", "percent": 40})
    foreign = json.dumps({"worker_id": "p-w9", "action": "ready"})
    try:
        for line in (own, "Traceback (most recent call last):", foreign, "   "):
            pool._on_line(r, line)
    finally:
        await pool.http.aclose()
    assert capsys.readouterr().err.splitlines() == [own]  # passed through unchanged
    wrapped = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(e["action"], e["worker"], e["target"], e["worker_id"]) for e in wrapped] == [
        ("worker_output", "w", "w", "p")
    ] * 2
    assert [e["human"] for e in wrapped] == ["Traceback (most recent call last):", foreign]
    assert list(r.log_tail) == [own, "Traceback (most recent call last):", foreign]
    assert r.load_percent == 40
