"""A real worker (real loaders, numpy engine, HTTP) serving the tiny GPT-OSS fixture, with the
GGUF's own tokenizer and with `--tokenizer tokenizer.json` (kind hf-json): /health says which
tokenizer and what the model is, and both tokenizers give the same greedy continuation (their ids
agree on the prompt, as the fixture's manifest records for transformers' tokenizer)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import trio

from actors.supervisor import Worker, run_worker
from api.app import create_app
from api.sse import SSEParser, check_grammar
from runtime.cli import build_parser, config_from_args
from runtime.config import WorkerConfig
from runtime.narration import Narrator
from tests.reference_data import REFERENCE_MODELS_DIR, reference_fixture

PROMPT = "The quick brown fox jumps over the lazy dog."


async def _serve_once(path: Path, body: dict, **config) -> tuple[dict, list]:
    """(/health once ready, the SSE events of one /execute)."""
    cfg = WorkerConfig(model=path, port=0, worker_id="t", max_context=64, **config)
    worker = Worker(cfg, backend="cpu", narrator=Narrator("t", stream=io.StringIO(), model="m"))
    out: dict = {}
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: run_worker(
                worker, create_app(worker.service), task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=10.0) as client:
            with trio.fail_after(30):
                await worker.ready.wait()
                out["health"] = (await client.get("/health")).json()
                async with client.stream("POST", "/execute", json=body) as response:
                    assert response.status_code == 200, await response.aread()
                    parser = SSEParser()
                    out["events"] = [
                        e async for chunk in response.aiter_bytes() for e in parser.feed(chunk)
                    ]
        nursery.cancel_scope.cancel()
    check_grammar(out["events"])
    return out["health"], out["events"]


def _text(events) -> str:
    assert events[-1].event == "end", events[-1]
    return "".join(e.data["t"] for e in events if e.event == "token")


async def test_gpt_oss_fixture_serves_with_either_tokenizer():
    path, manifest, _ = reference_fixture("gpt-oss-tiny")
    body = {"job_id": "j", "prompt": PROMPT, "max_tokens": 6, "temperature": 0.0}
    health, events = await _serve_once(path, body)
    assert health["status"] == "ready" and health["resident"] is True
    assert health["tokenizer_kind"] == "gguf-bpe" and health["backend"] == "cpu"
    assert health["vocab_size"] == manifest["config"]["vocab_size"]
    # the file's declared general.file_type (MOD-24): 38, llama.cpp's MXFP4_MOE, as the real
    # gpt-oss files declare it; the spec's /health names it MXFP4 (M0-W-1320, W-1823)
    assert health["quant_kind"] == "MXFP4"
    hf_json = REFERENCE_MODELS_DIR / "gpt-oss-tiny.tokenizer.json"
    hf_health, hf_events = await _serve_once(path, {**body, "job_id": "k"}, tokenizer=hf_json)
    assert hf_health["tokenizer_kind"] == "hf-json"
    assert _text(hf_events) == _text(events) != ""


def test_tokenizer_flag_and_environment_reach_the_config(tmp_path):
    file = tmp_path / "tokenizer.json"
    args = build_parser().parse_args(["--tokenizer", str(file)])
    assert config_from_args(args).tokenizer == file
    assert config_from_args(build_parser().parse_args([])).tokenizer is None
    assert WorkerConfig.from_env({"WORKER_ORCD_TOKENIZER": str(file)}).tokenizer == file


async def test_a_bad_tokenizer_file_fails_the_load_naming_it(tmp_path):
    import pytest

    from runtime.errors import ModelLoadError, first_error

    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}), encoding="utf-8")
    path, _, _ = reference_fixture("gpt-oss-tiny")
    with pytest.raises(BaseException) as caught:  # noqa: B017 (an exception group from trio)
        await _serve_once(path, {"prompt": "x"}, tokenizer=bad)
    error = first_error(caught.value)
    assert isinstance(error, ModelLoadError) and str(bad) in error.message
