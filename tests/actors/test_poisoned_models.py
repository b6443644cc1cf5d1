"""REL-7 through the real loaders and the whole worker: a poisoned model is never served healthy.

The worker here is the real one (real loaders, numpy engine, HTTP on a socket) on tiny synthetic
files from tests.poisoned_gguf. The mutation run damages a small file 50 ways (seeded, so every
run checks the same files) and requires, for each, exactly one of two outcomes: the load fails
with a ModelLoadError that names the file, or the model serves tokens from finite logits. A crash
(any other exception), a numpy warning (an error under pytest's filter) or a silent empty answer
fails the test.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from actors.loader import default_engine_loader, open_model_info
from actors.supervisor import Worker, run_worker
from api.app import create_app
from api.sse import SSEParser, check_grammar
from runtime.config import WorkerConfig
from runtime.errors import ModelLoadError, first_error
from runtime.gguf_header import read_header
from runtime.narration import Narrator
from runtime.sampling import SamplingParams
from tests.poisoned_gguf import poison_rows, tensor_info_offsets, tiny_model

POISONED_TOKEN = 3 + ord("q")  # the synthetic vocabulary: 3 specials, then one token per byte


async def _serve(path: Path, **config):
    """(worker, log, run): a real worker on `path`; `run(fn)` calls `fn(client)` once ready."""
    log = io.StringIO()
    cfg = WorkerConfig(model=path, port=0, worker_id="t", max_context=64, **config)
    worker = Worker(cfg, backend="cpu", narrator=Narrator("t", stream=log, model="tiny"))

    async def run(fn) -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: run_worker(
                    worker, create_app(worker.service), task_status=task_status
                )
            )
            async with httpx.AsyncClient(base_url=binds[0], timeout=10.0) as client:
                with trio.fail_after(30):
                    await worker.ready.wait()
                    await fn(client)
            nursery.cancel_scope.cancel()

    return worker, log, run


def _errors(log: io.StringIO) -> list[dict]:
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    return [e for e in events if e["action"] == "error"]


async def _load_failure(path: Path, **config) -> str:
    _, log, run = await _serve(path, **config)
    with pytest.raises(BaseException) as caught:  # noqa: B017 (an exception group from trio)
        await run(lambda client: trio.sleep_forever())
    error = first_error(caught.value)
    assert isinstance(error, ModelLoadError), error
    narrated = _errors(log)
    assert narrated and narrated[0]["code"] == "MODEL_LOAD_FAILED"
    return error.message


async def test_a_model_failing_the_probe_never_becomes_ready(tmp_path):
    path = poison_rows(tiny_model(tmp_path / "m.gguf"), "token_embd.weight", [5])
    message = await _load_failure(path)
    assert "probe forward pass failed" in message


async def test_check_tensors_names_the_bad_tensor_before_the_load(tmp_path):
    path = poison_rows(tiny_model(tmp_path / "m.gguf"), "token_embd.weight", [5])
    message = await _load_failure(path, check_tensors=True)
    assert "--check-tensors: tensor 'token_embd.weight'" in message


async def _stream(client: httpx.AsyncClient, body: dict) -> list:
    async with client.stream("POST", "/execute", json=body) as response:
        assert response.status_code == 200, await response.aread()
        parser = SSEParser()
        events = [e async for chunk in response.aiter_bytes() for e in parser.feed(chunk)]
    parser.close()
    check_grammar(events)
    return events


async def test_nan_at_run_time_is_an_error_event_and_the_worker_goes_on(tmp_path):
    """The untied model's row for "q" is NaN: the probe passes, a prompt with "q" gets a
    terminal `error` NON_FINITE_LOGITS (before: `end` with stop_reason eos and no text), and the
    next request is served."""
    path = tiny_model(tmp_path / "m.gguf", tied=False)
    poison_rows(path, "token_embd.weight", [POISONED_TOKEN])
    worker, log, run = await _serve(path)
    seen: dict[str, list] = {}

    async def jobs(client: httpx.AsyncClient) -> None:
        for job, temperature in (("g", 0.0), ("s", 0.8)):
            body = {"prompt": "zq", "max_tokens": 4, "temperature": temperature, "seed": 1}
            seen[job] = await _stream(client, {"job_id": job, **body})
        # greedy: a sampled continuation may itself reach "q" (p ~ 1/300 a token) and fail so
        ok = {"job_id": "ok", "prompt": "zz", "max_tokens": 4, "temperature": 0.0}
        seen["ok"] = await _stream(client, ok)

    await run(jobs)
    for job in ("g", "s"):
        assert [e.event for e in seen[job]] == ["started", "error"], seen
        assert seen[job][-1].data["code"] == "NON_FINITE_LOGITS"
        assert seen[job][-1].data["retriable"] is False
    assert seen["ok"][-1].event == "end" and seen["ok"][-1].data["tokens_out"] >= 1, seen
    assert [e["code"] for e in _errors(log)] == ["NON_FINITE_LOGITS"] * 2


# --- the mutation run ------------------------------------------------------------------------

MUTATIONS = 50


def _mutations(path: Path) -> list[tuple[str, int, int]]:
    """(kind, byte position, xor mask): a third in the metadata, a third in the tensor table
    (offsets, dims, types), a third in the tensor data; seeded."""
    header = read_header(path)
    table = tensor_info_offsets(path)
    table_start = table[0] - 200  # the tensor table follows the metadata; see tensor_info_offsets
    rng = random.Random(20251203)
    out = []
    for i in range(MUTATIONS):
        if i % 3 == 0:
            kind, pos = "metadata", rng.randrange(24, table_start)
        elif i % 3 == 1:
            kind, pos = "tensor table", rng.choice(table) + rng.randrange(-20, 8)
        else:
            kind, pos = "tensor data", rng.randrange(header.data_start, header.file_size)
        out.append((kind, pos, 1 << rng.randrange(8)))
    return out


def _serve_or_refuse(path: Path) -> str:
    """Load the file as the worker does and generate; 'refused' or 'served'; anything else
    raises (and fails the test)."""
    try:
        info = open_model_info(path)
        engine = default_engine_loader(
            path, "cpu", max_context=32, gpu_device=0, progress=lambda d, t: None
        )
    except ModelLoadError as error:
        # named: the file (open_gguf's errors) or the tokenizer key at fault
        assert str(path) in error.message or "tokenizer." in error.message, error.message
        return "refused"
    try:
        ids = info.tokenizer.encode("hello world") or [1]
        for params in (SamplingParams(temperature=0.0), SamplingParams(seed=3)):
            engine.release(0)
            engine.prefill(0, ids)
            for draw in range(3):
                assert np.isfinite(engine.logits(0)).all()
                (token,) = engine.sample([0], [params], [ids], [draw])  # NON_FINITE: -1
                assert 0 <= token < engine.config.vocab_size
                engine.decode([0], [token])
    finally:
        engine.close()
    return "served"


def test_fifty_mutations_each_load_and_serve_or_are_refused_by_name(tmp_path):
    clean = tiny_model(tmp_path / "clean.gguf").read_bytes()
    outcomes: dict[str, int] = {}
    for n, (kind, pos, mask) in enumerate(_mutations(tmp_path / "clean.gguf")):
        data = bytearray(clean)
        data[pos] ^= mask
        path = tmp_path / f"mut{n}.gguf"
        path.write_bytes(bytes(data))
        try:
            outcome = _serve_or_refuse(path)
        except Exception as error:
            raise AssertionError(f"{kind} byte {pos} ^ {mask:#x}: {error!r}") from error
        outcomes[f"{kind}: {outcome}"] = outcomes.get(f"{kind}: {outcome}", 0) + 1
        path.unlink()
    print(outcomes)
    assert sum(outcomes.values()) == MUTATIONS
    assert any(k.endswith("refused") for k in outcomes)  # the run does reach the checks
