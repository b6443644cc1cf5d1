"""The /v2 API of a real pool process: preflight refusals, bad bodies, the ready callback's
checks, preload. One pool serves the module (its refusals spawn nothing); the callback checks
use one real worker frozen (SIGSTOP) right after its spawn, so it stays `starting`.
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import numpy as np
import pytest
import trio
from gguf import GGUFWriter

from pool_managerd.model_refs import resolve_model_ref
from pool_managerd.page_cache import drop_from_cache
from tests.pool.pool_process import (
    EventRecorder,
    needs_callback,
    pool_device,
    pool_model_ref,
    start_pool,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool():
    with start_pool("--ready-timeout", "60", pool_id="api") as pool:
        yield pool
    assert pool.returncode == 0, pool.tail()


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def start_body(**fields) -> dict:
    return {"model_ref": pool_model_ref(), "gpu_id": pool_device(), **fields}


def write_gguf(path, arch: str) -> None:
    """A well-formed GGUF file of architecture `arch`, with one small F32 tensor."""
    writer = GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_preflight_refuses_what_no_worker_could_serve(pool, tmp_path):
    missing = pool.post("/v2/workers/start", start_body(model_ref=f"file:{tmp_path}/none.gguf"))
    error = error_of(missing, 404, "NOT_FOUND")
    assert error["field"] == "model_ref" and error["details"]["path"].endswith("none.gguf")

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    error = error_of(
        pool.post("/v2/workers/start", start_body(model_ref=f"file:{junk}")),
        422,
        "MODEL_INCOMPATIBLE",
    )
    assert error["details"]["path"] == str(junk) and "magic" in error["message"].lower()

    other = tmp_path / "mamba.gguf"
    write_gguf(other, "mamba")
    error = error_of(
        pool.post("/v2/workers/start", start_body(model_ref=f"file:{other}")),
        422,
        "MODEL_INCOMPATIBLE",
    )
    assert "mamba" in error["message"] and "not supported" in error["message"]

    truncated = tmp_path / "cut.gguf"
    with open(resolve_model_ref(pool_model_ref()), "rb") as source:
        truncated.write_bytes(source.read(1 << 20))  # the header and a little of the tensors
    error_of(
        pool.post("/v2/workers/start", start_body(model_ref=f"file:{truncated}")),
        422,
        "MODEL_INCOMPATIBLE",
    )

    error = error_of(pool.post("/v2/workers/start", start_body(model_ref="no-such-model")), 404,
                     "NOT_FOUND")  # fmt: skip
    assert "no-such-model" in error["message"]
    error = error_of(pool.post("/v2/workers/start", start_body(gpu_id=7)), 404, "NOT_FOUND")
    assert error["field"] == "gpu_id" and error["details"]["devices"]
    assert pool.state()["workers"] == []  # nothing was spawned for any of them


def test_a_model_larger_than_the_device_is_insufficient_vram():
    with start_pool("--memory-limit", "1000000", pool_id="tiny") as pool:
        error = error_of(pool.post("/v2/workers/start", start_body()), 409, "INSUFFICIENT_VRAM")
        details = error["details"]
        assert details["total_bytes"] == 1_000_000 and details["available_bytes"] <= 1_000_000
        assert details["needed_bytes"] > 1_000_000 and details["gpu_id"] == pool_device()
        view = pool.state()["gpus"][0]
        assert view["total_vram"] == 1_000_000 and view["allocated_vram"] == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v2/workers/start", {"gpu_id": "cpu"}, "model_ref"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m"}, "gpu_id"),
        ("/v2/workers/start", {"model_ref": 5, "gpu_id": "cpu"}, "model_ref"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m", "gpu_id": True}, "gpu_id"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m", "gpu_id": -1}, "gpu_id"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m", "gpu_id": "gpu0"}, "gpu_id"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m", "gpu_id": "cpu", "max_context": 0},
         "max_context"),
        ("/v2/workers/start", {"model_ref": "smollm2-135m", "gpu_id": "cpu", "gpu": 1}, "gpu"),
        ("/v2/workers/start", {"model_ref": "file:relative/x.gguf", "gpu_id": "cpu"}, "model_ref"),
        ("/v2/workers/start", {"model_ref": "hf:only-org/x.gguf", "gpu_id": "cpu"}, "model_ref"),
        ("/v2/workers/start", {"model_ref": "Not A Ref!", "gpu_id": "cpu"}, "model_ref"),
        ("/v2/workers/stop", {}, "worker_id"),
        ("/v2/workers/stop", {"worker_id": "a b"}, "worker_id"),
        ("/v2/models/preload", {"model_ref": ["x"]}, "model_ref"),
        ("/v2/internal/workers/ready", {"worker_id": "x"}, "model_ref"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(pool, path, body, field):
    error = error_of(pool.post(path, body), 400, "INVALID_REQUEST")
    assert error["field"] == field, error


@pytest.mark.parametrize(
    ("content", "content_type", "field"),
    [
        (b"{not json", "application/json", "body"),
        (b"[1, 2]", "application/json", "body"),
        (b"[" * 10_000, "application/json", "body"),  # nested past the recursion limit
        (b'{"model_ref": "x"}', "text/plain", "content-type"),
    ],
)
def test_malformed_bodies_are_400(pool, content, content_type, field):
    response = pool.client.post(
        "/v2/workers/start", content=content, headers={"Content-Type": content_type}
    )
    assert error_of(response, 400, "INVALID_REQUEST")["field"] == field


def test_big_bodies_unknown_ids_and_routes(pool):
    big = pool.client.post(
        "/v2/workers/start",
        content=b'{"model_ref": "' + b"x" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    error_of(big, 413, "PAYLOAD_TOO_LARGE")
    error_of(pool.post("/v2/workers/stop", {"worker_id": "nobody"}), 404, "NOT_FOUND")
    error_of(pool.client.post("/v2/workers/nobody/drain"), 404, "NOT_FOUND")
    error_of(pool.client.get("/v2/nothing"), 404, "NOT_FOUND")
    error_of(pool.client.get("/v2/workers/start"), 405, "INVALID_REQUEST")


def test_refusals_on_one_keep_alive_connection(pool):
    """Refusals that need no body must still read it: an unread body stalled hypercorn's next
    request on the same connection (found here: the wrong Content-Type, then a 413)."""
    with httpx.Client(base_url=pool.base_url, timeout=5) as client:
        for _ in range(5):
            plain = client.post("/v2/workers/start", content=b'{"x": 1}',
                                headers={"Content-Type": "text/plain"})  # fmt: skip
            error_of(plain, 400, "INVALID_REQUEST")
            error_of(client.post("/v2/workers/nobody/drain", json={"a": 1}), 404, "NOT_FOUND")
            error_of(client.post("/v2/nope", json={"a": 1}), 404, "NOT_FOUND")
            too_big = client.post(
                "/v2/workers/start",
                content=b'{"model_ref": "' + b"x" * 70_000 + b'"}',
                headers={"Content-Type": "application/json"},
            )
            error_of(too_big, 413, "PAYLOAD_TOO_LARGE")


async def test_a_post_to_an_unknown_route_in_two_writes_is_answered(pool):
    """DESIGN rule 10: the body of a POST to an unknown route arrives in a second TCP write."""
    host, port = pool.base_url.removeprefix("http://").rsplit(":", 1)
    body = b'{"model_ref": "smollm2-135m"}'
    head = (
        "POST /v2/nope HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(head.encode())
            await trio.sleep(0.2)
            await stream.send_all(body)
            answer = b""
            while b'"NOT_FOUND"' not in answer:
                chunk = await stream.receive_some(65536)
                assert chunk, answer
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 404")


@needs_callback  # the frozen worker must first get as far as loading
def test_the_ready_callback_checks_who_what_and_how_much(pool):
    started = pool.start_worker()
    wid = started["worker_id"]
    pool.freeze_at_load(started)  # it stays `starting`: only this test speaks for it
    try:
        good = {
            "worker_id": wid,
            "model_ref": started["model_ref"],
            "vram_bytes": started["vram_reserved"],
            "uri": "http://127.0.0.1:1",
            "memory_architecture": "vram-only",
            "capabilities": {"streaming": True},
        }
        url = "/v2/internal/workers/ready"
        error_of(pool.post(url, {**good, "worker_id": "nobody"}), 404, "NOT_FOUND")
        error = error_of(pool.post(url, {**good, "model_ref": "other"}), 409, "CONFLICT")
        assert error["field"] == "model_ref" and error["details"]["expected"] == good["model_ref"]
        error = error_of(
            pool.post(url, {**good, "vram_bytes": 2 * started["vram_reserved"]}), 409, "CONFLICT"
        )
        assert error["details"]["reserved_bytes"] == started["vram_reserved"]
        for uri in ("ftp://127.0.0.1:1", "http://127.0.0.1", "http://:80", "http://h:1/x"):
            assert (
                error_of(pool.post(url, {**good, "uri": uri}), 400, "INVALID_REQUEST")["field"]
                == "uri"
            )
        error_of(pool.post(url, {**good, "vram_bytes": -1}), 400, "INVALID_REQUEST")
        assert pool.worker(wid)["status"] == "starting"
        accepted = pool.post(url, good)
        assert accepted.status_code == 200 and accepted.json()["status"] == "ready"
        record = pool.worker(wid)
        assert record["uri"] == good["uri"] and record["capabilities"] == {"streaming": True}
        error = error_of(pool.post(url, good), 409, "CONFLICT")  # not `starting` any more
        assert error["details"]["status"] == "ready"
        # drain: a ready worker goes out of rotation; twice is fine
        for _ in range(2):
            drained = pool.client.post(f"/v2/workers/{wid}/drain")
            assert drained.status_code == 200 and drained.json()["status"] == "draining"
    finally:
        assert pool.post("/v2/workers/stop", {"worker_id": wid}).status_code == 202
    done = pool.wait_status(wid, "stopped", timeout_s=15)
    assert done["exit_code"] == -signal.SIGKILL  # frozen: /shutdown and SIGTERM go unanswered
    error = error_of(pool.client.post(f"/v2/workers/{wid}/drain"), 409, "CONFLICT")
    assert error["details"]["status"] == "stopped"


def test_preload_reads_the_model_into_the_page_cache_with_progress(pool):
    path = str(resolve_model_ref(pool_model_ref()))
    drop_from_cache(path)
    assert fincore_bytes(path) == 0  # the kernel's own count (util-linux), not ours
    events = EventRecorder(pool.base_url)
    answer = pool.post("/v2/models/preload", {"model_ref": pool_model_ref()})
    assert answer.status_code == 202, answer.text
    assert answer.json()["path"] == path and answer.json()["status"] == "loading"
    final = events.wait_for("model_preload", status="hot", path=path)
    events.close()
    size = os.path.getsize(path)
    assert final["percent"] == 100 and final["done_bytes"] == final["total_bytes"] == size
    mine = events.of("model_preload", path=path)
    percents = [e["percent"] for e in mine]
    assert percents[0] == 0 and percents == sorted(percents) and percents.count(100) == 1
    assert [e["status"] for e in mine[:-1]] == ["loading"] * (len(mine) - 1)
    assert fincore_bytes(path) >= size  # page-granular: the last page is counted whole
    (model,) = [m for m in pool.state()["models"] if m["path"] == path]
    assert model["status"] == "hot" and model["resident_bytes"] == size


def fincore_bytes(path: str) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return int(out.stdout.split()[0])
