"""OpenAI's /v1 routes over real HTTP against a whole worker with the fake engine.

The fake engine's rule (tests/actors/fakes.py) makes every answer predictable: the text after
a prompt ending in character c is the alphabet from c's successor on, and the fake tokenizer
has one token per character, so `usage` can be checked exactly. What is checked here: the wire
grammar (tests/openai_sse.py), finish reasons, usage, every refusal's status, envelope and
param, a mid-stream engine error, cancellation by id, by disconnect (streamed, not streamed,
during prefill) and by shutdown; the framing byte for byte on a raw socket.
"""

from __future__ import annotations

import json
import threading
from functools import partial

import pytest
import trio

from api.openai_schema import ServedModel
from runtime.errors import VramOom
from tests.actors.fakes import Script, disconnect_after, expected_text, running_worker, wait_until
from tests.api.test_http_errors import raw_post
from tests.openai_sse import ChunkReader, check_stream, parse_stream

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "abc"}]
RENDERED = "<|user|>abc<|assistant|>"  # the fake chat template's rendering of MESSAGES


def error_of(response, status: int, code: str, param: str | None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["param"] == param and error["message"], error
    kind = "invalid_request_error" if status < 500 else "server_error"
    assert error["type"] == kind, error
    return error


async def stream_of(h, path: str, body: dict) -> tuple[list, dict]:
    response = await h.client.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_stream(response.content)
    return events, dict(response.headers)


async def test_chat_stream_grammar_text_and_id():
    async with running_worker() as h:
        events, headers = await stream_of(h, CHAT, {"messages": MESSAGES, "max_tokens": 5})
        got = check_stream(events, "chat")
        assert got["text"] == expected_text(RENDERED, 5) and got["finish_reason"] == "length"
        assert got["id"].startswith("chatcmpl-") and headers["x-request-id"] == got["id"]
        assert events[0]["model"] == "fake-model"


async def test_completion_stream_with_usage_counts_every_token():
    async with running_worker() as h:
        body = {"prompt": "abc", "max_tokens": 4, "stream_options": {"include_usage": True}}
        events, _ = await stream_of(h, COMPLETIONS, body)
        got = check_stream(events, "completion", include_usage=True)
        assert got["text"] == expected_text("abc", 4) and got["id"].startswith("cmpl-")
        assert got["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        chat, _ = await stream_of(
            h,
            CHAT,
            {"messages": MESSAGES, "max_tokens": 2, "stream_options": {"include_usage": True}},
        )
        usage = check_stream(chat, "chat", include_usage=True)["usage"]
        assert usage["prompt_tokens"] == len(RENDERED) and usage["completion_tokens"] == 2


async def test_non_streamed_answers():
    async with running_worker() as h:
        response = await h.client.post(CHAT, json={"messages": MESSAGES, "max_tokens": 3})
        answer = response.json()
        assert response.status_code == 200 and answer["object"] == "chat.completion"
        assert answer["id"] == response.headers["x-request-id"]
        assert answer["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": expected_text(RENDERED, 3)},
                "logprobs": None,
                "finish_reason": "length",
            }
        ]
        assert answer["usage"] == {
            "prompt_tokens": len(RENDERED),
            "completion_tokens": 3,
            "total_tokens": len(RENDERED) + 3,
        }
        response = await h.client.post(COMPLETIONS, json={"prompt": ["xy"], "max_tokens": 2})
        answer = response.json()
        assert answer["object"] == "text_completion" and answer["choices"][0][
            "text"
        ] == expected_text("xy", 2)
        assert answer["model"] == "fake-model" and isinstance(answer["created"], int)


async def test_finish_reason_stop_for_a_stop_string_and_for_eos():
    async with running_worker(Script(eos_at=5)) as h:
        body = {"prompt": "abc", "max_tokens": 20, "stop": ["mn", "zz"]}
        answer = (await h.client.post(COMPLETIONS, json=body)).json()
        assert (
            answer["choices"][0]["text"] == "kl" and answer["choices"][0]["finish_reason"] == "stop"
        )
        events, _ = await stream_of(h, COMPLETIONS, {**body, "stop": "m"})
        assert check_stream(events, "completion")["text"] == "kl"
        answer = (await h.client.post(COMPLETIONS, json={"prompt": "abc", "max_tokens": 20})).json()
        # EOS was the 6th token: counted in usage (as in /execute's tokens_out), never sent.
        assert answer["choices"][0] == {
            "index": 0, "text": expected_text("abc", 5), "logprobs": None, "finish_reason": "stop"
        }  # fmt: skip
        assert answer["usage"]["completion_tokens"] == 6


async def test_max_tokens_defaults_to_the_rest_of_the_context():
    async with running_worker(max_context=64) as h:
        answer = (await h.client.post(COMPLETIONS, json={"prompt": "abc"})).json()
        assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 61, "total_tokens": 64}
        assert answer["choices"][0]["finish_reason"] == "length"
        full = await h.client.post(COMPLETIONS, json={"prompt": "a" * 64})
        error_of(full, 400, "INVALID_REQUEST", "prompt")
        over = await h.client.post(COMPLETIONS, json={"prompt": "abc", "max_tokens": 62})
        error_of(over, 400, "INVALID_REQUEST", "max_tokens")


REFUSED = [
    (CHAT, {"n": 2}, "n"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    (CHAT, {"tool_choice": "auto"}, "tool_choice"),
    (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"logprobs": True}, "logprobs"),
    (CHAT, {"top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"logit_bias": {"5": 1}}, "logit_bias"),
    (CHAT, {"frequency_penalty": 0.5}, "frequency_penalty"),
    (CHAT, {"presence_penalty": -1}, "presence_penalty"),
    (CHAT, {"presence_penalty": 3}, "presence_penalty"),  # out of OpenAI's range, too
    (CHAT, {"max_tokens": 0}, "max_tokens"),
    (CHAT, {"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
    (CHAT, {"temperature": 2.5}, "temperature"),
    (CHAT, {"top_p": 0}, "top_p"),
    (CHAT, {"seed": -1}, "seed"),
    (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"stream": "yes"}, "stream"),
    (CHAT, {"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    (CHAT, {"max_tokenz": 4}, "max_tokenz"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0]",
    ),
    (
        CHAT,
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
        "messages[0].tool_calls",
    ),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"echo": True}, "echo"),
    (COMPLETIONS, {"best_of": 2}, "best_of"),
    (COMPLETIONS, {"suffix": "end"}, "suffix"),
    (COMPLETIONS, {"logprobs": 1}, "logprobs"),
    (COMPLETIONS, {"messages": MESSAGES}, "messages"),  # a chat field on completions
]


async def test_every_refusal_is_a_400_naming_the_parameter():
    async with running_worker() as h:
        with trio.fail_after(20):
            for path, override, param in REFUSED:
                base = {"messages": MESSAGES} if path == CHAT else {"prompt": "abc"}
                response = await h.client.post(path, json={**base, **override})
                error_of(response, 400, "INVALID_REQUEST", param)
        assert h.engine.prefill_calls == 0
        wrong = await h.client.post(CHAT, json={"model": "gpt-4o", "messages": MESSAGES})
        assert "fake-model" in error_of(wrong, 404, "NOT_FOUND", "model")["message"]
        missing = await h.client.get("/v1/models/gpt-4o")
        error_of(missing, 404, "NOT_FOUND", "model")
        route = await h.client.post("/v1/embeddings", json={})
        error_of(route, 404, "NOT_FOUND", None)
        cut = await h.client.post(
            CHAT, content=b'{"messages": [', headers={"Content-Type": "application/json"}
        )
        error_of(cut, 400, "INVALID_REQUEST", "body")
        text = await h.client.post(CHAT, content=b"{}", headers={"Content-Type": "text/plain"})
        error_of(text, 400, "INVALID_REQUEST", "content-type")
        head = (
            f"POST {COMPLETIONS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        )
        chunk = b"x" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        for extra, parts in (
            ("Content-Length: 1048577\r\n\r\n", [b"{" * 1000]),  # declared too large
            ("Transfer-Encoding: chunked\r\n\r\n", [frame] * 17),  # found too large
        ):
            answer = await raw_post(str(h.client.base_url), head + extra, parts)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            envelope = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert envelope["code"] == "PAYLOAD_TOO_LARGE"
            assert envelope["type"] == "invalid_request_error"
        header = await h.client.post(
            CHAT, json={"messages": MESSAGES}, headers={"X-Request-Id": "has space"}
        )
        error_of(header, 400, "INVALID_REQUEST", "x-request-id")


async def test_fields_without_effect_nulls_and_extensions_are_accepted():
    async with running_worker() as h:
        body = {
            "model": "fake-model",
            "messages": [
                {"role": "developer", "content": "x", "name": "ops"},
                {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]},
            ],
            "max_completion_tokens": 2,
            "user": "u-1", "metadata": {"k": "v"}, "store": False, "n": 1, "logprobs": False,
            "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
            "frequency_penalty": 0, "presence_penalty": 0.0, "temperature": None, "seed": None,
            "stop": None, "top_k": 3, "min_p": 0.1, "repetition_penalty": 1.1, "top_p": 0.9,
        }  # fmt: skip
        response = await h.client.post(CHAT, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == len(
            "<|system|>x<|user|>abc<|assistant|>"
        )


async def test_a_model_without_chat_template_refuses_chat_but_serves_completions():
    async with running_worker(chat_template=None) as h:
        error = error_of(
            await h.client.post(CHAT, json={"messages": MESSAGES}),
            400,
            "INVALID_REQUEST",
            "messages",
        )
        assert "chat template" in error["message"] and "prompt" in error["message"]
        ok = await h.client.post(COMPLETIONS, json={"prompt": "abc", "max_tokens": 1})
        assert ok.status_code == 200


async def test_loading_and_busy_are_503_with_retry_after():
    gate = threading.Event()
    async with running_worker(Script(load_gate=gate), wait_ready=False) as h:
        loading = await h.client.post(CHAT, json={"messages": MESSAGES})
        assert error_of(loading, 503, "LOADING", None) and loading.headers["retry-after"] == "2"
        gate.set()
        with trio.fail_after(10):
            await h.worker.ready.wait()
    prefill = threading.Event()
    async with running_worker(Script(prefill_gate=prefill), queue_size=1) as h:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(2):  # one running (held in prefill), one queued
                    body = {"prompt": "a", "max_tokens": 1}
                    nursery.start_soon(partial(h.client.post, COMPLETIONS, json=body))
                    await wait_until(lambda n=i + 1: len(h.worker.scheduler.live) == n)
                busy = await h.client.post(COMPLETIONS, json={"prompt": "a"})
                assert error_of(busy, 503, "BUSY", None) and busy.headers["retry-after"] == "1"
                prefill.set()


async def test_an_engine_error_mid_stream_is_a_data_event_then_done():
    script = Script(fail_at_step=2, fail_with=VramOom("out of VRAM in the KV cache"))
    async with running_worker(script) as h:
        events, _ = await stream_of(h, CHAT, {"messages": MESSAGES, "max_tokens": 10})
        got = check_stream(events, "chat")
        assert got["error"] == {
            "message": "out of VRAM in the KV cache",
            "type": "server_error",
            "param": None,
            "code": "VRAM_OOM",
        }
        assert got["text"] == expected_text(RENDERED, 3) and got["finish_reason"] is None
        h.engine.steps = 0  # the next job fails at its third step again
        response = await h.client.post(COMPLETIONS, json={"prompt": "abc", "max_tokens": 10})
        error_of(response, 503, "VRAM_OOM", None)  # not streamed: the status says it


async def test_the_response_id_cancels_through_cancel():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        reader, cancelled = ChunkReader(), False
        with trio.fail_after(10):
            async with h.client.stream(
                "POST", CHAT, json={"messages": MESSAGES, "max_tokens": 400, "stream": True}
            ) as response:
                async for chunk in response.aiter_bytes():
                    reader.feed(chunk)
                    if reader.events and not cancelled:  # the first chunk names the job
                        cancelled = True
                        job_id = reader.events[0]["id"]
                        cancel = await h.client.post("/cancel", json={"job_id": job_id})
                        assert cancel.status_code == 202
        error = check_stream(reader.close(), "chat")["error"]
        assert error["code"] == "CANCELLED" and error["type"] == "server_error"
        assert h.engine.steps < 400

        async def cancel_soon():
            await wait_until(lambda: h.engine.steps >= 2)
            cancel = await h.client.post("/cancel", json={"job_id": "cmpl-mine-1"})
            assert cancel.status_code == 202

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_soon)
                response = await h.client.post(
                    COMPLETIONS, json={"prompt": "a", "max_tokens": 400},
                    headers={"X-Request-Id": "mine-1"},
                )  # fmt: skip
        assert response.headers["x-request-id"] == "cmpl-mine-1"
        error_of(response, 503, "CANCELLED", None)


def ended(h, job_id: str) -> dict | None:
    ends = [e for e in h.narration() if e["action"] == "execute_end" and e["job_id"] == job_id]
    return ends[0] if ends else None


async def steps_stop(h) -> None:
    """Nothing runs on once the job ended: the step count stays put."""
    steps = h.engine.steps
    await trio.sleep(0.1)
    assert h.engine.steps == steps


async def test_a_disconnect_mid_stream_stops_the_job_within_a_step():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        base = str(h.client.base_url)
        body = {"messages": MESSAGES, "max_tokens": 400, "stream": True}
        with trio.fail_after(10):
            await disconnect_after(base, body, b"data: ", 4, path=CHAT)
            steps = h.engine.steps
            await wait_until(lambda: h.worker.service.open_streams == 0 and h.narration()[-1])
            await wait_until(lambda: any(e["action"] == "execute_end" for e in h.narration()))
        end = next(e for e in h.narration() if e["action"] == "execute_end")
        assert end["code"] == "CANCELLED" and h.engine.steps <= steps + 2
        await steps_stop(h)


async def _send_and_hang_up(h, path: str, body: dict, request_id: str, until) -> None:
    host, port = str(h.client.base_url).removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head + payload)
        await wait_until(until)


async def test_a_non_streamed_client_that_goes_away_stops_its_job():
    async with running_worker(Script(step_delay_s=0.02)) as h:
        with trio.fail_after(10):
            body = {"prompt": "abc", "max_tokens": 400}
            await _send_and_hang_up(h, COMPLETIONS, body, "gone", lambda: h.engine.steps >= 3)
            steps = h.engine.steps
            await wait_until(lambda: ended(h, "cmpl-gone") is not None)
        assert ended(h, "cmpl-gone")["code"] == "CANCELLED"
        assert h.engine.steps <= steps + 2
        await steps_stop(h)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_disconnect_during_prefill_stops_between_chunks(stream):
    gate = threading.Event()
    async with running_worker(Script(prefill_gate=gate), max_context=1024) as h:
        body = {"prompt": "abcdefghij" * 60, "max_tokens": 4, "stream": stream}  # 3 chunks

        def in_prefill() -> bool:
            handle = h.worker.scheduler.live.get("cmpl-pre")
            return handle is not None and handle.state.value == "running"

        with trio.fail_after(10):
            await _send_and_hang_up(h, COMPLETIONS, body, "pre", in_prefill)
            await wait_until(lambda: h.worker.scheduler.live["cmpl-pre"].cancel_requested)
            gate.set()  # the engine finishes the chunk it is in, then must stop
            await wait_until(lambda: ended(h, "cmpl-pre") is not None)
        assert ended(h, "cmpl-pre")["code"] == "CANCELLED"
        assert h.engine.prefill_calls == 1 and h.engine.steps == 0


async def test_a_job_cancelled_while_queued_is_an_http_error_not_a_200():
    gate = threading.Event()
    async with running_worker(Script(prefill_gate=gate)) as h:
        answers = {}

        async def post(name: str, body: dict) -> None:
            headers = {"X-Request-Id": name}
            answers[name] = await h.client.post(COMPLETIONS, json=body, headers=headers)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post, "first", {"prompt": "a", "max_tokens": 2})
                await wait_until(lambda: "cmpl-first" in h.worker.scheduler.live)
                await wait_until(lambda: h.worker.executor.pending == 0)  # first is running
                nursery.start_soon(post, "queued", {"prompt": "a", "stream": True})
                await wait_until(lambda: "cmpl-queued" in h.worker.scheduler.live)
                cancel = await h.client.post("/cancel", json={"job_id": "cmpl-queued"})
                assert cancel.status_code == 202
                await wait_until(lambda: "queued" in answers)
                gate.set()
        error_of(answers["queued"], 503, "CANCELLED", None)
        assert answers["first"].status_code == 200


async def test_shutdown_ends_an_open_stream_with_an_error_event():
    async with running_worker(Script(step_delay_s=0.01), shutdown_deadline_s=0.1) as h:
        reader = ChunkReader()

        async def read() -> None:
            body = {"messages": MESSAGES, "max_tokens": 400, "stream": True}
            async with h.client.stream("POST", CHAT, json=body) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    reader.feed(chunk)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await wait_until(lambda: h.engines and h.engine.steps >= 3)
                assert (await h.client.post("/shutdown")).status_code == 202
        got = check_stream(reader.close(), "chat")
        assert got["error"]["code"] == "CANCELLED" and "shutting down" in got["error"]["message"]


async def test_the_framing_byte_for_byte_on_a_raw_socket():
    """HTTP/1.1 chunked SSE: `data: ` lines, LF only, no `event:` lines, [DONE] last."""
    async with running_worker() as h:
        host, port = str(h.client.base_url).removeprefix("http://").rsplit(":", 1)
        payload = json.dumps({"prompt": "abc", "max_tokens": 3, "stream": True}).encode()
        head = (
            f"POST {COMPLETIONS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        received = b""
        with trio.fail_after(10):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(head + payload)
                while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                    chunk = await stream.receive_some(65536)
                    assert chunk, received
                    received += chunk
        header, _, chunked = received.partition(b"\r\n\r\n")
        lines = header.decode().lower().split("\r\n")
        assert lines[0] == "http/1.1 200 "
        assert "content-type: text/event-stream; charset=utf-8" in lines
        assert "transfer-encoding: chunked" in lines and "cache-control: no-cache" in lines
        body = b""
        while True:  # de-chunk
            size, _, chunked = chunked.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            body, chunked = body + chunked[:n], chunked[n + 2 :]
        assert b"event:" not in body and b"\r" not in body
        assert body.endswith(b'"finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
        assert check_stream(parse_stream(body), "completion")["text"] == expected_text("abc", 3)


async def test_the_official_async_client_raises_the_mid_stream_error():
    import openai

    script = Script(fail_at_step=1, fail_with=VramOom("out of VRAM"))
    async with running_worker(script) as h:
        client = openai.AsyncOpenAI(
            base_url=f"{h.client.base_url}/v1", api_key="unused", max_retries=0
        )
        texts = []
        with trio.fail_after(10):
            stream = await client.chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=10, stream=True
            )
            with pytest.raises(openai.APIError) as raised:
                async for chunk in stream:
                    texts.append(chunk.choices[0].delta.content or "")
            await client.close()
        assert raised.value.code == "VRAM_OOM" and raised.value.type == "server_error"
        assert "".join(texts) == expected_text(RENDERED, 2)


def test_the_served_model_id_is_the_catalog_name_for_a_catalog_file():
    served = ServedModel.from_stem("SmolLM2-135M-Instruct.Q4_1")
    assert served.id == "smollm2-135m"
    assert served.accepted == {"smollm2-135m", "SmolLM2-135M-Instruct.Q4_1"}
    assert ServedModel.from_stem("my-finetune") == ServedModel(
        "my-finetune", frozenset({"my-finetune"})
    )


async def test_models_list_and_retrieve():
    async with running_worker() as h:
        listing = (await h.client.get("/v1/models")).json()
        assert listing["object"] == "list" and len(listing["data"]) == 1
        model = listing["data"][0]
        assert model["id"] == "fake-model" and model["object"] == "model"
        assert isinstance(model["created"], int) and model["owned_by"]
        assert (await h.client.get("/v1/models/fake-model")).json() == model
