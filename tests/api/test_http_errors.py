"""Refusals over real HTTP, before any stream starts: 400/413/409/503 LOADING/503 BUSY/404.

Also: /health while loading and while generating. One fake-engine worker per test.
"""

from __future__ import annotations

import json
import threading
import time

import trio

from tests.actors.fakes import Script, running_worker
from tests.api.test_validation import DEEP_BODY, HUGE_INT_BODY, INVALID, body_with

JSON = {"Content-Type": "application/json"}


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


async def test_every_validation_rule_answers_400_with_the_field():
    async with running_worker() as h:
        with trio.fail_after(20):
            for override, field in INVALID:
                # json.dumps, not httpx's encoder: it writes NaN/Infinity and escapes lone
                # surrogates ("\\ud800"), as a client in another language may.
                content = json.dumps(body_with(override)).encode()
                response = await h.client.post("/execute", content=content, headers=JSON)
                assert error_of(response, 400, "INVALID_REQUEST")["field"] == field, override
        assert h.engine.prefill_calls == 0  # nothing reached the engine
        assert "execute_start" not in h.actions()


async def test_malformed_json_and_wrong_content_type():
    async with running_worker() as h:
        response = await h.client.post(
            "/execute", content=b'{"job_id": "a",', headers={"Content-Type": "application/json"}
        )
        assert error_of(response, 400, "INVALID_REQUEST")["field"] == "body"
        for raw in (HUGE_INT_BODY, DEEP_BODY):  # ValueError / RecursionError inside json.loads
            response = await h.client.post("/execute", content=raw, headers=JSON)
            assert error_of(response, 400, "INVALID_REQUEST")["field"] == "body"
        response = await h.client.post(
            "/execute",
            content=b'{"job_id": "a", "prompt": "x"}',
            headers={"Content-Type": "text/plain"},
        )
        assert error_of(response, 400, "INVALID_REQUEST")["field"] == "content-type"
        response = await h.client.post(
            "/cancel", content=b"[]", headers={"Content-Type": "application/json"}
        )
        assert error_of(response, 400, "INVALID_REQUEST")["field"] == "body"


async def raw_post(base_url: str, head: str, body_parts: list[bytes]) -> bytes:
    """Send a request on a raw socket (a client may stop writing once refused), read the answer."""
    host, port = base_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head.encode())
        for part in body_parts:
            try:
                await stream.send_all(part)
            except trio.BrokenResourceError:
                break  # the server answered and closed: fine
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    return received


async def test_body_over_one_mib_is_413():
    async with running_worker() as h:
        with trio.fail_after(10):
            base = "POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            # Declared too large: refused before the body is read.
            answer = await raw_post(
                str(h.client.base_url), base + "Content-Length: 1048577\r\n\r\n", [b"{" * 1000]
            )
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b'"PAYLOAD_TOO_LARGE"' in answer
            # Chunked, no length: refused once 1 MiB has been read.
            chunk = b"x" * 65536
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            answer = await raw_post(
                str(h.client.base_url), base + "Transfer-Encoding: chunked\r\n\r\n", [frame] * 17
            )
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b'"PAYLOAD_TOO_LARGE"' in answer
            # Just under the limit is read (and then judged on its content).
            body = b'{"job_id": "a", "prompt": "' + b"x" * 32_769 + b'"}'
            response = await h.client.post(
                "/execute", content=body, headers={"Content-Type": "application/json"}
            )
            assert error_of(response, 400, "INVALID_REQUEST")["field"] == "prompt"


async def test_prompt_plus_max_tokens_must_fit_the_context():
    async with running_worker(max_context=64) as h:
        response = await h.client.post(
            "/execute", json={"job_id": "c", "prompt": "x" * 60, "max_tokens": 10}
        )
        assert error_of(response, 400, "INVALID_REQUEST")["field"] == "max_tokens"
        response = await h.client.post(
            "/execute", json={"job_id": "c", "prompt": "x" * 80, "max_tokens": 1}
        )
        assert error_of(response, 400, "INVALID_REQUEST")["field"] == "prompt"
        events = await h.execute(job_id="fits", prompt="x" * 54, max_tokens=10)
        assert events[-1].event == "end"


async def test_duplicate_running_job_id_is_409_and_busy_is_503_with_retry_after():
    gate = threading.Event()
    async with running_worker(Script(prefill_gate=gate), queue_size=1) as h:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: h.execute(job_id="run", prompt="a", max_tokens=2))
                while not ("run" in h.worker.scheduler.live and h.worker.executor.pending == 0):
                    await trio.sleep(0.005)
                response = await h.client.post("/execute", json={"job_id": "run", "prompt": "b"})
                error_of(response, 409, "CONFLICT")
                nursery.start_soon(lambda: h.execute(job_id="wait", prompt="a", max_tokens=2))
                while "wait" not in h.worker.scheduler.live:
                    await trio.sleep(0.005)
                response = await h.client.post("/execute", json={"job_id": "wait", "prompt": "b"})
                error_of(response, 409, "CONFLICT")  # queued counts too
                # BUSY comes before the prompt is tokenized: a full queue costs no tokenizer work
                # (were it tokenized, encode() would wait on this gate for 10 s).
                tokenizer = h.worker.info.tokenizer
                calls, tokenizer.encode_gate = tokenizer.encode_calls, threading.Event()
                with trio.fail_after(2):
                    response = await h.client.post(
                        "/execute", json={"job_id": "more", "prompt": "b"}
                    )
                error = error_of(response, 503, "BUSY")
                assert int(response.headers["retry-after"]) >= 1
                assert "field" not in error
                assert tokenizer.encode_calls == calls
                tokenizer.encode_gate = None
                gate.set()
        starts = [e["job_id"] for e in h.narration() if e["action"] == "execute_start"]
        assert starts == ["run", "wait"]


async def test_loading_health_and_503_loading():
    gate = threading.Event()
    async with running_worker(Script(load_gate=gate, load_steps=4), wait_ready=False) as h:
        with trio.fail_after(10):
            while True:
                response = await h.client.get("/health")
                if response.json()["load_percent"] == 0 and h.engines == []:
                    break
                await trio.sleep(0.005)
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "loading" and body["resident"] is False
            response = await h.client.post("/execute", json={"job_id": "early", "prompt": "a"})
            error_of(response, 503, "LOADING")
            assert "retry-after" in response.headers
            response = await h.client.post("/cancel", json={"job_id": "early"})
            error_of(response, 404, "NOT_FOUND")
            gate.set()
            await h.worker.ready.wait()
            response = await h.client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert (
            body["status"] == "ready" and body["resident"] is True and body["load_percent"] == 100
        )
        assert body["context_length"] == 512 and body["vocab_size"] == 16
        assert body["tokenizer_kind"] == "fake-chars" and body["quant_kind"] == "F32"
        assert body["backend"] == "cpu" and body["model"] == "fake-model"
        assert body["vram_bytes_used"] == 0 and body["uptime_seconds"] > 0


async def test_health_is_fast_while_generating():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        latencies = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: h.execute(job_id="long", prompt="a", max_tokens=100))
                while "long" not in h.worker.scheduler.live:
                    await trio.sleep(0.005)
                for _ in range(60):
                    t0 = time.perf_counter()
                    response = await h.client.get("/health")
                    latencies.append(time.perf_counter() - t0)
                    assert response.status_code == 200 and response.json()["status"] == "ready"
                assert "long" in h.worker.scheduler.live  # measured while the job ran
                await h.client.post("/cancel", json={"job_id": "long"})
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.02  # generous for a loaded CI box
        assert latencies[-1] < 0.25


async def test_unknown_route_and_method_get_json_errors():
    async with running_worker() as h:
        error_of(await h.client.get("/nope"), 404, "NOT_FOUND")
        error_of(await h.client.get("/execute"), 405, "INVALID_REQUEST")


async def test_fast_health_path_matches_the_quart_route():
    async with running_worker() as h:
        fast = await h.client.get("/health", headers={"X-Correlation-Id": "fast-1"})
        assert fast.headers["x-correlation-id"] == "fast-1"
        slow = await h.app.quart.test_client().get("/health")
        assert fast.status_code == slow.status_code == 200
        fast_body, slow_body = fast.json(), await slow.get_json()
        assert fast_body.pop("uptime_seconds") > 0 and slow_body.pop("uptime_seconds") > 0
        assert fast_body == slow_body
        head = await h.client.head("/health")
        assert head.status_code == 200 and head.content == b""


MESSAGES = [{"role": "user", "content": "hi"}]


async def test_a_chat_template_that_does_not_parse_is_a_clear_400_and_prompts_still_work():
    broken = "{% for m in messages %}{{ m['content'] }}"  # no endfor
    async with running_worker(chat_template=broken) as h:
        with trio.fail_after(10):
            response = await h.client.post("/execute", json={"job_id": "c", "messages": MESSAGES})
            error = error_of(response, 400, "INVALID_REQUEST")
            assert error["field"] == "messages"
            assert "chat template cannot be used" in error["message"]
            assert "send a prompt" in error["message"]
            events = await h.execute(job_id="p", prompt="abc", max_tokens=2)
        assert events[-1].event == "end"
        # Found at load, before any request: the operator is told once.
        (warning,) = [e for e in h.narration() if e["action"] == "chat_template_unusable"]
        assert warning["level"] == "warning"
        assert h.actions().index("chat_template_unusable") < h.actions().index("ready")


async def test_a_chat_template_that_recurses_forever_is_a_400():
    recursive = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    async with running_worker(chat_template=recursive) as h:
        with trio.fail_after(10):
            response = await h.client.post("/execute", json={"job_id": "r", "messages": MESSAGES})
            error = error_of(response, 400, "INVALID_REQUEST")
            assert error["field"] == "messages" and "recursed" in error["message"]
            assert (await h.client.get("/health")).json()["status"] == "ready"
        assert "chat_template_unusable" not in h.actions()  # it parses; it fails per request


async def test_messages_to_a_model_without_chat_template_are_a_clear_400():
    async with running_worker(chat_template=None) as h:
        with trio.fail_after(10):
            response = await h.client.post("/execute", json={"job_id": "m", "messages": MESSAGES})
            error = error_of(response, 400, "INVALID_REQUEST")
            assert error["field"] == "messages"
            assert "no chat template" in error["message"] and "'prompt'" in error["message"]
            events = await h.execute(job_id="p", prompt="abc", max_tokens=2)
        assert events[-1].event == "end"
