"""The actor tree: start order, load progress, crashes ending everything, residency, draining."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import httpx
import pytest
import trio

from actors.loader import ModelInfo
from actors.supervisor import Worker
from runtime.config import WorkerConfig
from runtime.errors import CudaError, ModelLoadError, first_error
from runtime.narration import Narrator
from tests.actors.fakes import (
    EventReader,
    FakeTokenizer,
    Script,
    expected_text,
    running_worker,
    text_of,
)


async def test_load_progress_is_narrated_in_order_and_health_percent_never_goes_back():
    seen = []
    async with running_worker(Script(load_steps=10, load_delay_s=0.02), wait_ready=False) as h:
        with trio.fail_after(10):
            while not h.worker.ready.is_set():
                body = (await h.client.get("/health")).json()  # the port is open before the model
                seen.append((body["status"], body["load_percent"]))
                await trio.sleep(0.01)
        actions = h.actions()
        narration = h.narration()
    assert seen[0] == ("loading", 0)
    percents = [p for _, p in seen]
    assert percents == sorted(percents)
    assert any(0 < p < 100 for p in percents)  # progress was visible while loading
    order = [a for a in actions if a.startswith("model_load") or a in ("ready", "listening")]
    assert order[:2] == ["listening", "model_load_start"]
    assert order[-2:] == ["model_load_complete", "ready"]
    marks = [e["percent"] for e in narration if e["action"] == "model_load_progress"]
    assert marks == [0, 25, 50, 75, 100]


async def test_executor_crash_cancels_siblings_and_closes_http():
    with pytest.raises(BaseException) as info:  # noqa: B017 (a trio exception group)
        async with running_worker(Script(fail_at_step=2, step_delay_s=0.01)) as h:
            base_url = str(h.client.base_url)
            with trio.fail_after(10):
                events = []
                try:
                    async with h.client.stream(
                        "POST", "/execute", json={"job_id": "boom", "prompt": "a", "max_tokens": 50}
                    ) as response:
                        events = await EventReader(response).rest()
                except httpx.HTTPError as error:
                    events = error  # a cut stream: reported by the assertion below
                await trio.sleep_forever()  # the crash cancels us
    # The stream was not cut: its last word is the crash's terminal event, and only one.
    assert isinstance(events, list) and events, f"stream cut without a terminal event: {events!r}"
    terminal = [e for e in events if e.event in ("end", "error")]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    assert terminal[0].event == "error" and terminal[0].data["code"] == "INTERNAL"
    assert terminal[0].data["retriable"] is False
    assert isinstance(first_error(info.value), RuntimeError)
    assert "scripted engine failure" in str(first_error(info.value))
    ends = [e for e in h.narration() if e["action"] == "execute_end"]
    assert ends and ends[-1]["code"] == "INTERNAL"
    assert h.engine.closed  # the executor thread still closed the engine on its way out
    with pytest.raises(httpx.ConnectError):  # nobody serves HTTP with a dead executor
        await httpx.AsyncClient().get(base_url + "/health")


async def test_load_failure_is_fatal_and_narrated():
    with pytest.raises(BaseException) as info:  # noqa: B017
        async with running_worker(
            Script(fail_load=ModelLoadError("x.gguf: bad magic")), wait_ready=False
        ) as h:
            with trio.fail_after(10):
                await trio.sleep_forever()
    assert isinstance(first_error(info.value), ModelLoadError)
    errors = [e for e in h.narration() if e["action"] == "error"]
    assert errors and errors[0]["code"] == "MODEL_LOAD_FAILED" and errors[0]["level"] == "error"


async def test_residency_violation_makes_the_worker_unhealthy():
    async with running_worker(Script(residency_ok=False), residency_interval_s=0.05) as h:
        with trio.fail_after(10):
            while (await h.client.get("/health")).json()["status"] != "unhealthy":
                await trio.sleep(0.01)
            response = await h.client.get("/health")
            assert response.status_code == 503
            assert response.json()["resident"] is False
            response = await h.client.post("/execute", json={"job_id": "x", "prompt": "a"})
            assert response.status_code == 503
        violations = [e for e in h.narration() if e.get("violation") == "residency"]
        assert violations and violations[0]["level"] == "error"
        assert violations[0]["action"] == "error" and violations[0]["reason"] == "violation"
        assert h.engine.residency_checks >= 1
        assert len(h.engine.threads) == 1  # checked on the executor thread


async def test_a_stuck_executor_makes_the_worker_unhealthy():
    # The engine's residency check hangs (stands for a hung executor thread): after the check
    # timeout /health must stop saying ready, and new jobs are refused.
    gate = threading.Event()
    script = Script(residency_gate=gate)
    async with running_worker(
        script, residency_interval_s=0.05, residency_check_timeout_s=0.3
    ) as h:
        with trio.fail_after(10):
            t0 = trio.current_time()
            while (await h.client.get("/health")).json()["status"] == "ready":
                await trio.sleep(0.01)
            waited = trio.current_time() - t0
            response = await h.client.get("/health")
            assert response.status_code == 503
            assert response.json()["status"] == "unhealthy"
            assert response.json()["resident"] is False
            response = await h.client.post("/execute", json={"job_id": "x", "prompt": "a"})
            assert response.status_code == 503
        assert 0.25 <= waited < 5  # the timeout (0.3 s), not the 5 s default nor forever
        (error,) = [e for e in h.narration() if e.get("violation") == "residency"]
        assert error["action"] == "error" and error["level"] == "error"
        assert error["reason"] == "unresponsive" and "executor unresponsive" in error["human"]
        gate.set()


async def test_residency_checks_run_between_decode_steps():
    async with running_worker(Script(step_delay_s=0.01), residency_interval_s=0.03) as h:
        with trio.fail_after(10):
            events = await h.execute(job_id="long", prompt="a", max_tokens=40)
        assert events[-1].event == "end"
        assert h.engine.residency_checks >= 3  # they did not wait for the 0.4 s job to end
        assert (await h.client.get("/health")).json()["status"] == "ready"


async def _drain_scenario(h, max_tokens: int, streams: dict, probe) -> None:
    """A running job and a queued one, then a shutdown; `probe()` runs while it drains."""
    gate = h.script.step_gate

    async def run(job_id):
        async with h.client.stream(
            "POST", "/execute", json={"job_id": job_id, "prompt": "a", "max_tokens": max_tokens}
        ) as response:
            streams[job_id] = await EventReader(response).rest()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "running")
        while h.engine.steps < 3:
            await trio.sleep(0.005)
        nursery.start_soon(run, "queued")
        while "queued" not in h.worker.scheduler.live:
            await trio.sleep(0.005)
        gate.clear()  # hold the running job inside a step while we look at the drain
        nursery.start_soon(h.worker.shutdown, "test drain")
        while h.worker.state.status != "draining":
            await trio.sleep(0.005)
        await probe()
        gate.set()


async def _refuses_new_work(h) -> None:
    health = await h.client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"
    response = await h.client.post("/execute", json={"job_id": "late", "prompt": "a"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "DRAINING"


def gated_worker(shutdown_deadline_s: float):
    """A worker whose engine steps pass a gate (open now; `_drain_scenario` holds it)."""
    gate = threading.Event()
    gate.set()
    script = Script(step_gate=gate, step_delay_s=0.005)
    return running_worker(script, shutdown_deadline_s=shutdown_deadline_s, max_batch=1)


async def test_drain_lets_the_running_job_finish_cancels_the_queued_and_refuses_new_work():
    async with gated_worker(5.0) as h:
        streams: dict = {}

        async def probe():
            await _refuses_new_work(h)
            # The queued job never runs: its only event is its terminal CANCELLED, at once.
            while "queued" not in streams:
                await trio.sleep(0.005)
            assert [e.event for e in streams["queued"]] == ["error"]
            assert streams["queued"][-1].data["code"] == "CANCELLED"
            assert "running" not in streams  # the running one goes on

        with trio.fail_after(10):
            await _drain_scenario(h, 60, streams, probe)
        running = streams["running"]
        assert running[-1].event == "end" and running[-1].data["tokens_out"] == 60
        assert text_of(running) == expected_text("a", 60)
        assert "shutdown" in h.actions()
        assert h.engine.closed  # the drain closed the engine (VRAM freed on cuda)


async def test_drain_cancels_the_running_job_when_the_deadline_passes():
    async with gated_worker(0.3) as h:
        streams: dict = {}
        with trio.fail_after(10):
            t0 = trio.current_time()
            await _drain_scenario(h, 500, streams, lambda: _refuses_new_work(h))
            while not h.worker.stopped.is_set():
                await trio.sleep(0.005)
            waited = trio.current_time() - t0
        last = streams["running"][-1]
        assert last.event == "error" and last.data["code"] == "CANCELLED"
        assert "deadline" in last.data["message"]
        assert 0.3 <= waited < 3.0
        assert [e.event for e in streams["queued"]] == ["error"]
        assert "shutdown_deadline" in h.actions()
        assert h.engine.closed


async def test_shutdown_while_loading_abandons_the_load_quickly():
    async with running_worker(Script(load_steps=100, load_delay_s=0.02), wait_ready=False) as h:
        with trio.fail_after(10):
            while h.worker.state.load_percent < 5:
                await trio.sleep(0.01)
            t0 = trio.current_time()
            await h.worker.shutdown("stop during load")
            assert trio.current_time() - t0 < 1.0
        assert h.engines == []  # the load never finished
        assert not h.worker.ready.is_set()
        assert "error" not in h.actions()  # a requested stop is not a crash


async def _collect(client: httpx.AsyncClient, body: dict, into: dict) -> None:
    try:
        async with client.stream("POST", "/execute", json=body) as response:
            into[body["job_id"]] = await EventReader(response).rest()
    except httpx.HTTPError as error:  # a cut connection: recorded so the test can say so
        into[body["job_id"]] = error


async def test_fatal_cuda_error_gives_every_live_stream_a_terminal_event_then_exits():
    script = Script(fail_at_step=3, fail_with=CudaError("illegal address", fatal=True))
    script.step_delay_s = 0.02
    streams: dict = {}
    with pytest.raises(BaseException) as info:  # noqa: B017 (a trio exception group)
        async with running_worker(script) as h:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        _collect,
                        h.client,
                        {"job_id": "running", "prompt": "a", "max_tokens": 50},
                        streams,
                    )
                    await trio.sleep(0.01)  # FIFO: "running" is taken first, "queued" waits
                    nursery.start_soon(
                        _collect,
                        h.client,
                        {"job_id": "queued", "prompt": "b", "max_tokens": 5},
                        streams,
                    )
                await trio.sleep_forever()  # the crash cancels us
    assert isinstance(first_error(info.value), CudaError)
    for job_id in ("running", "queued"):
        events = streams[job_id]
        assert isinstance(events, list), (
            f"{job_id}: stream cut without a terminal event: {events!r}"
        )
        terminal = [e for e in events if e.event in ("end", "error")]
        assert len(terminal) == 1 and events[-1] is terminal[0]
        assert terminal[0].event == "error" and terminal[0].data["code"] == "CUDA_ERROR"
    assert h.engine.closed


async def test_fatal_error_in_a_residency_check_ends_the_worker():
    script = Script(residency_error=CudaError("context lost", fatal=True))
    with pytest.raises(BaseException) as info:  # noqa: B017
        async with running_worker(script, residency_interval_s=0.05) as h:
            with trio.fail_after(10):
                await trio.sleep_forever()  # the crash cancels us
    assert isinstance(first_error(info.value), CudaError)
    assert h.engine.closed


async def test_shutdown_before_the_core_starts_makes_run_core_return_at_once():
    # SIGTERM during startup: the drain runs before `run_core` has begun. The core must then
    # not start a load for an executor that was already told to stop (it would wait forever).
    loads = []

    def engine_loader(path, backend, **kwargs):
        loads.append(path)
        raise AssertionError("no model may be loaded after a shutdown")

    worker = Worker(
        WorkerConfig(model=Path("fake-model.gguf"), port=0, worker_id="test"),
        backend="cpu",
        narrator=Narrator("test", stream=io.StringIO(), model="fake-model"),
        info_loader=lambda path: ModelInfo(FakeTokenizer(), None, "", "</s>", context_length=64),
        engine_loader=engine_loader,
    )
    with trio.fail_after(5):
        await worker.shutdown("received SIGTERM")
        await worker.run_core()
    assert loads == []
    assert not worker.ready.is_set()
    assert worker.state.health()[1]["status"] == "draining"
