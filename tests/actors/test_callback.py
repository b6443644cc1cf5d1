"""The ready callback (--callback-url) in-process: payload, retries, refusal ends the worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from actors import callback
from runtime.config import WorkerConfig
from runtime.errors import first_error
from tests.actors.fakes import running_worker


async def callback_server(answers: list[int], received: list[dict], *, task_status) -> None:
    """A minimal HTTP server: records each JSON body, answers the next status in `answers`."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length:
            body += await stream.receive_some(65536)
        received.append(json.loads(body))
        status = answers.pop(0) if answers else 200
        await stream.send_all(
            f"HTTP/1.1 {status} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope".encode()
        )

    await trio.serve_listeners(handle, listeners)


async def test_the_worker_announces_itself_once_ready_with_its_bound_port():
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(callback_server, [], received)
        url = f"http://127.0.0.1:{port}/ready"
        async with running_worker(callback_url=url, model_ref="pool:fake") as h:
            with trio.fail_after(10):
                while "ready_callback" not in h.actions():  # answered, and narrated
                    await trio.sleep(0.01)
            (payload,) = received
            assert payload == {
                "worker_id": "test",
                "model_ref": "pool:fake",
                "vram_bytes": 0,
                "uri": str(h.client.base_url).rstrip("/"),
                "memory_architecture": "vram-only",
                "capabilities": {
                    "backend": "cpu",
                    "quant_kind": "F32",
                    "max_context": 512,
                    "streaming": True,
                    "cancel": True,
                    "metrics": True,
                    "shutdown": True,
                },
            }
            assert not payload["uri"].endswith(":0")  # port 0 was resolved to the real one
            assert h.actions().index("ready") < h.actions().index("ready_callback")
        nursery.cancel_scope.cancel()


async def test_a_server_error_is_retried_and_then_accepted(monkeypatch):
    monkeypatch.setattr(callback, "RETRY_PAUSE_S", 0.01)
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(callback_server, [503, 500], received)
        async with running_worker(callback_url=f"http://127.0.0.1:{port}/") as h:
            with trio.fail_after(10):
                while "ready_callback" not in h.actions():
                    await trio.sleep(0.01)
        assert len(received) == 3
        failed = [e for e in h.narration() if e["action"] == "ready_callback_attempt_failed"]
        assert [e["attempt"] for e in failed] == [1, 2] and "HTTP 503" in failed[0]["detail"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("answers", "attempts", "reason"),
    [([403], 1, "HTTP 403"), ([502, 502, 502], 3, "HTTP 502")],
    ids=["refused-once-no-retry", "failing-three-times"],
)
async def test_a_refused_or_failed_callback_ends_the_worker(monkeypatch, answers, attempts, reason):
    monkeypatch.setattr(callback, "RETRY_PAUSE_S", 0.01)
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(callback_server, list(answers), received)
        with pytest.raises(BaseException) as info:  # noqa: B017 (the supervisor's group)
            async with running_worker(callback_url=f"http://127.0.0.1:{port}/") as h:
                with trio.fail_after(10):
                    await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    assert isinstance(first_error(info.value), callback.CallbackFailed)
    assert len(received) == attempts
    (failed,) = [e for e in h.narration() if e["action"] == "ready_callback_failed"]
    assert failed["level"] == "error" and reason in failed["detail"]
    assert h.engine.closed  # the executor still closed the engine on the way out


async def test_nobody_listening_is_three_bounded_attempts(monkeypatch):
    monkeypatch.setattr(callback, "RETRY_PAUSE_S", 0.01)
    with trio.socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BaseException) as info:  # noqa: B017
        async with running_worker(callback_url=f"http://127.0.0.1:{port}/") as h:
            with trio.fail_after(20):
                await trio.sleep_forever()
    assert isinstance(first_error(info.value), callback.CallbackFailed)
    failed = [e for e in h.narration() if e["action"] == "ready_callback_attempt_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    assert "ConnectError" in failed[0]["detail"]


def test_model_ref_defaults_to_the_files_absolute_path(tmp_path):
    model = tmp_path / "m.gguf"
    assert WorkerConfig(model=model).resolved_model_ref() == f"file:{model.resolve()}"
    relative = WorkerConfig(model=Path("x.gguf")).resolved_model_ref()
    assert relative == f"file:{Path('x.gguf').resolve()}"
    assert WorkerConfig(model=model, model_ref="hf:org/name").resolved_model_ref() == "hf:org/name"
    with pytest.raises(ValueError, match="callback_url"):
        WorkerConfig(callback_url="ftp://example.org/")
