"""The loader builds the tokenizer while the executor loads the engine (load time to ready)."""

from __future__ import annotations

import gc
import io
import threading
from pathlib import Path

import pytest
import trio

from actors.loader import ModelInfo, default_engine_loader
from actors.supervisor import Worker, run_worker
from api.app import create_app
from runtime.config import WorkerConfig
from runtime.errors import ModelLoadError, first_error
from runtime.gguf_file import open_gguf
from runtime.narration import Narrator
from tests.actors.fakes import FakeEngine, FakeTokenizer, Script

WAIT_S = 5.0


def _worker(info_loader, engine_loader, log: io.StringIO) -> Worker:
    return Worker(
        WorkerConfig(model=Path("fake-model.gguf"), port=0, worker_id="t", max_context=128),
        backend="cpu",
        narrator=Narrator("t", stream=log, model="fake-model"),
        info_loader=info_loader,
        engine_loader=engine_loader,
    )


async def test_tokenizer_and_engine_load_at_the_same_time():
    # Each loader waits (bounded) until the other has started: run one after the other, the
    # first would time out and say so.
    info_started, engine_started = threading.Event(), threading.Event()
    saw: dict[str, bool] = {}
    contexts: list[int] = []

    def info_loader(path):
        info_started.set()
        saw["engine"] = engine_started.wait(WAIT_S)
        return ModelInfo(FakeTokenizer(), None, "", "</s>", context_length=4096)

    def engine_loader(path, backend, *, max_context, gpu_device, progress, **_):
        engine_started.set()
        saw["info"] = info_started.wait(WAIT_S)
        contexts.append(max_context)
        progress(0, 1)
        progress(1, 1)
        return FakeEngine(Script(), max_context)

    worker = _worker(info_loader, engine_loader, io.StringIO())
    gc.unfreeze()  # (an earlier worker in this process froze its objects)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_worker(
                worker, create_app(worker.service), task_status=task_status
            )
        )
        with trio.fail_after(3 * WAIT_S):
            await worker.ready.wait()
            assert worker.state.health()[1]["status"] == "ready"
            assert gc.get_freeze_count() > 0  # the loaded state is out of the collector's way
            await worker.shutdown("test finished")
    assert saw == {"engine": True, "info": True}
    assert contexts == [128]  # the configured context; default_engine_loader clamps to the file


@pytest.mark.parametrize("failing", ["info", "engine"])
async def test_a_failed_load_is_reported_as_itself_not_as_a_group(failing):
    def info_loader(path):
        if failing == "info":
            raise ModelLoadError("x.gguf: no tokenizer.ggml.tokens")
        return ModelInfo(FakeTokenizer(), None, "", "</s>", context_length=4096)

    def engine_loader(path, backend, *, max_context, gpu_device, progress, **_):
        if failing == "engine":
            raise ModelLoadError("x.gguf: bad magic")
        return FakeEngine(Script(), max_context)

    log = io.StringIO()
    worker = _worker(info_loader, engine_loader, log)
    with pytest.raises(BaseException) as raised:  # noqa: B017  (the supervisor's group)
        with trio.fail_after(3 * WAIT_S):
            await run_worker(worker, create_app(worker.service))
    error = first_error(raised.value)
    assert isinstance(error, ModelLoadError)
    expected = "no tokenizer.ggml.tokens" if failing == "info" else "bad magic"
    assert expected in error.message
    assert f'The model failed to load: x.gguf: {expected}"' in log.getvalue()
    assert worker.state.health()[1]["status"] == "unhealthy"


def test_default_engine_loader_clamps_the_context_to_the_file(tmp_path):
    from tools.make_synthetic_gguf import write_synthetic_model

    path = write_synthetic_model(tmp_path / "tiny.gguf", n_layers=1, vocab_size=512)
    with open_gguf(path) as model:
        trained = model.config.context_length
    seen: list[int] = []
    engine = default_engine_loader(
        path, "cpu", max_context=trained + 1000, gpu_device=0, progress=lambda d, t: seen.append(d)
    )
    try:
        assert engine.max_context == trained
        assert seen[0] == 0 and seen == sorted(seen)
    finally:
        engine.close()


async def test_the_real_loaders_open_the_file_once_and_close_it(tmp_path, monkeypatch):
    # Tokenizer and engine loader share one open (one header parse); the file is closed once
    # both are done. Also: a collector turned off for the startup (as `worker-orcd` does) is on
    # again once the worker is ready.
    import runtime.gguf_file
    from tools.make_synthetic_gguf import write_synthetic_model

    path = write_synthetic_model(tmp_path / "tiny.gguf", n_layers=1, vocab_size=512)
    opened = []
    real_open = runtime.gguf_file.open_gguf

    def counting_open(p):
        opened.append(real_open(p))
        return opened[-1]

    monkeypatch.setattr(runtime.gguf_file, "open_gguf", counting_open)
    worker = Worker(
        WorkerConfig(model=path, port=0, worker_id="t", max_context=64),
        backend="cpu",
        narrator=Narrator("t", stream=io.StringIO(), model="tiny"),
    )
    gc.unfreeze()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_worker(
                    worker, create_app(worker.service), task_status=task_status
                )
            )
            with trio.fail_after(6 * WAIT_S):
                await worker.ready.wait()
                assert gc.isenabled()
                assert len(opened) == 1
                assert opened[0].tensors == {}  # closed (records handed out keep their bytes)
                assert worker.info.tokenizer.vocab_size == 512
                assert worker.info.context_length == opened[0].config.context_length
                assert worker.state.facts.context_length == 64
                await worker.shutdown("test finished")
    finally:
        gc.enable()


def test_a_failed_shared_open_is_tried_again_by_the_next_loader(tmp_path):
    from actors.loader import SharedModelFile

    shared = SharedModelFile(tmp_path / "missing.gguf")
    for _ in range(2):  # each user sees the error itself, not a cached "None"
        with pytest.raises(ModelLoadError, match="missing.gguf"):
            shared.acquire()
        shared.release()
