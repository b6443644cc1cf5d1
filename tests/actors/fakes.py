"""Test doubles for the runtime tests: a scripted engine, a one-character tokenizer, a harness.

The engine follows a rule simple enough for tests to predict independently: the token after
token t is (t + 1) mod 15; token 15 is EOS. The tokenizer maps a character c to ord(c) mod 15
and token i back to chr(97 + i), so the prompt "abc" continues "defgh...". Delays and gates
(threading.Events the engine waits on) let a test stop the engine at a precise point: inside
the load, inside a prefill chunk, inside a decode step. Every engine call records its thread,
so tests can check that one thread, never the event loop's, owns the engine.

The harness runs a whole worker (`run_worker`: hypercorn on 127.0.0.1:0, real sockets) with
these doubles in place of the model, and talks to it with httpx.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import numpy as np
import trio

from actors.loader import ModelInfo
from actors.supervisor import Worker, run_worker
from api.app import create_app
from api.guard import ConnectionGuard
from api.sse import SSEEvent, SSEParser, check_grammar
from runtime.config import WorkerConfig
from runtime.engine_api import ResidencyReport
from runtime.errors import VramOom
from runtime.narration import Narrator
from runtime.redaction import Redactor

VOCAB = 16
EOS = 15
GATE_TIMEOUT_S = 10.0  # a gate never blocks an engine thread forever, even if a test fails
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def expected_text(prompt: str, n: int) -> str:
    """What the fake engine generates for `prompt` (greedy by construction), n tokens."""
    last = ord(prompt[-1]) % EOS
    out = []
    for _ in range(n):
        last = (last + 1) % EOS
        out.append(chr(97 + last))
    return "".join(out)


class FakeDecoder:
    def push(self, token_id: int) -> str:
        return "" if token_id == EOS else chr(97 + token_id)

    def flush(self) -> str:
        return ""


class FakeTokenizer:
    kind = "fake-chars"
    vocab_size = VOCAB
    bos_id = None
    eos_id = EOS
    add_bos = False
    eog_ids = frozenset({EOS})

    def __init__(self, encode_gate: threading.Event | None = None):
        self.encode_gate = encode_gate  # encode() waits here (a long prompt being tokenized)
        self.encode_calls = 0

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        self.encode_calls += 1
        if self.encode_gate is not None:
            self.encode_gate.wait(GATE_TIMEOUT_S)
        return [ord(c) % EOS for c in text]

    def token_bytes(self, token_id: int) -> bytes:
        return b"</s>" if token_id == EOS else bytes([97 + token_id])

    def incremental_decoder(self) -> FakeDecoder:
        return FakeDecoder()


@attrs.define
class Script:
    """How the fake engine behaves; gates are set by the test to let the engine go on."""

    step_delay_s: float = 0.0
    prefill_delay_s: float = 0.0
    load_steps: int = 8  # progress callbacks during load
    load_delay_s: float = 0.0  # per load step
    load_gate: threading.Event | None = None  # load waits here after reporting 0 %
    prefill_gate: threading.Event | None = None  # the first prefill chunk waits here
    step_gate: threading.Event | None = None  # every decode step waits here
    eos_at: int | None = None  # output index at which EOS is sampled
    fail_at_step: int | None = None  # step() raises `fail_with` at this step
    fail_with: Exception | None = None  # default: RuntimeError, an engine bug
    # prefill raises VramOom for a chunk holding this token (one job's error, not the engine's)
    oom_token: int | None = None
    residency_error: Exception | None = None  # check_residency() raises this
    residency_gate: threading.Event | None = None  # check_residency() waits here (stuck thread)
    encode_gate: threading.Event | None = None  # the tokenizer's encode() waits here
    fail_load: Exception | None = None
    residency_ok: bool = True


class FakeEngine:
    backend = "cpu"
    quant_kind = "F32"
    prefill_chunk = 256

    def __init__(self, script: Script, max_context: int, max_batch: int = 1):
        self.script = script
        self.max_context = max_context
        self.max_batch = max_batch
        self.config = None
        self._position = [0] * max_batch
        self._last = [0] * max_batch
        self._out = [0] * max_batch  # decode steps since release: the next sample's index
        self.prefill_calls = 0
        self.steps = 0  # decode calls
        self.batch_sizes: list[int] = []  # slots of each decode call
        self._pending: tuple[list[int], list[int]] | None = None  # the decode to run
        self.residency_checks = 0
        self.closed = False
        self.threads: set[int] = set()

    def _touch(self) -> None:
        self.threads.add(threading.get_ident())

    def position(self, slot: int) -> int:
        self._flush()
        return self._position[slot]

    def release(self, slot: int) -> None:
        self._touch()
        if self._pending is not None and slot in self._pending[0]:  # dropped, as NumpyEngine
            slots, tokens = self._pending
            keep = [i for i, s in enumerate(slots) if s != slot]
            kept = ([slots[i] for i in keep], [tokens[i] for i in keep])
            self._pending = kept if keep else None
        self._position[slot] = 0
        self._out[slot] = 0

    def prefill(self, slot: int, tokens) -> None:
        self._touch()
        self._flush()
        if self.script.prefill_gate is not None and self.prefill_calls == 0:
            self.script.prefill_gate.wait(GATE_TIMEOUT_S)
        time.sleep(self.script.prefill_delay_s)
        if self.script.oom_token is not None and self.script.oom_token in tokens:
            raise VramOom("scripted: this prompt's prefill ran out of device memory")
        self.prefill_calls += 1
        self._position[slot] += len(tokens)
        self._last[slot] = tokens[-1]

    def decode(self, slots, tokens) -> None:
        """Deferred to the next call, as the real engines do (the GPU runs it meanwhile)."""
        self._touch()
        self._flush()
        self._pending = (list(slots), list(tokens))

    def _flush(self) -> None:
        if self._pending is None:
            return
        (slots, tokens), self._pending = self._pending, None
        if self.script.step_gate is not None:
            self.script.step_gate.wait(GATE_TIMEOUT_S)
        time.sleep(self.script.step_delay_s)
        if self.script.fail_at_step is not None and self.steps == self.script.fail_at_step:
            raise self.script.fail_with or RuntimeError("scripted engine failure")
        self.steps += 1
        self.batch_sizes.append(len(slots))
        for slot, token in zip(slots, tokens, strict=True):
            self._position[slot] += 1
            self._last[slot] = token
            self._out[slot] += 1

    def logits(self, slot: int) -> np.ndarray:
        self._touch()
        self._flush()
        logits = np.zeros(VOCAB, dtype=np.float32)  # (vocab,)
        eos = self.script.eos_at == self._out[slot]
        logits[EOS if eos else (self._last[slot] + 1) % EOS] = 10.0
        return logits

    def sample(self, slots, params, histories, draws) -> list[int]:
        self._flush()
        return [int(np.argmax(self.logits(slot))) for slot in slots]

    def memory_bytes(self) -> int:
        return 4096

    def check_residency(self) -> ResidencyReport:
        self._touch()
        self.residency_checks += 1
        if self.script.residency_gate is not None:
            self.script.residency_gate.wait(GATE_TIMEOUT_S)
        if self.script.residency_error is not None:
            raise self.script.residency_error
        ok = self.script.residency_ok
        return ResidencyReport(ok, 4096, "fake arrays intact" if ok else "fake array moved")

    def close(self) -> None:
        self._touch()
        self.closed = True


@attrs.define
class Harness:
    worker: Worker
    app: ConnectionGuard  # what hypercorn serves; `.quart` is the Quart app inside
    client: httpx.AsyncClient
    log: io.StringIO
    engines: list[FakeEngine]
    script: Script

    @property
    def engine(self) -> FakeEngine:
        return self.engines[0]

    def narration(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def actions(self) -> list[str]:
        return [e["action"] for e in self.narration()]

    async def execute(self, **body) -> list[SSEEvent]:
        """POST /execute and read the whole stream, checked by the strict parser."""
        async with self.client.stream("POST", "/execute", json=body) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_events(response)
        check_grammar(events)
        return events


class EventReader:
    """Reads a live SSE response in steps: `take(n)` events now, `rest()` to the end."""

    def __init__(self, response: httpx.Response):
        self._chunks = response.aiter_bytes()
        self._parser = SSEParser()
        self._ready: list[SSEEvent] = []
        self._ended = False

    async def _more(self) -> bool:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._parser.close()
            self._ended = True
            return False
        self._ready += self._parser.feed(chunk)
        return True

    async def take(self, n: int) -> list[SSEEvent]:
        while len(self._ready) < n and await self._more():
            pass
        out, self._ready = self._ready[:n], self._ready[n:]
        return out

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def rest(self) -> list[SSEEvent]:
        while not self._ended and await self._more():
            pass
        out, self._ready = self._ready, []
        return out


async def disconnect_after(
    base_url: str, body: dict, marker: bytes, count: int, path: str = "/execute"
) -> bytes:
    """POST `path` on a raw socket, read until `marker` was seen `count` times, hang up.

    (httpx cannot abandon a stream half-read without leaking its async generators.)
    """
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(head + payload)
        while received.count(marker) < count:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    return received


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll `predicate` every 5 ms; fail (trio.TooSlowError) after `timeout` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def read_events(response: httpx.Response) -> list[SSEEvent]:
    return await EventReader(response).rest()


def text_of(events: list[SSEEvent]) -> str:
    return "".join(e.data["t"] for e in events if e.event == "token")


@contextlib.asynccontextmanager
async def running_worker(
    script: Script | None = None,
    *,
    wait_ready: bool = True,
    max_context: int = 512,
    residency_check_timeout_s: float | None = None,
    chat_template: str | None = CHATML,
    **config: object,
) -> AsyncIterator[Harness]:
    """A whole worker on a real socket with the fake model; shut down (drained) on exit."""
    script = script or Script()
    engines: list[FakeEngine] = []
    log = io.StringIO()

    def info_loader(path: Path) -> ModelInfo:
        tokenizer = FakeTokenizer(script.encode_gate)
        return ModelInfo(tokenizer, chat_template, "", "</s>", context_length=4096)

    def engine_loader(path, backend, *, max_context, gpu_device, progress, max_batch=1):
        progress(0, script.load_steps)
        if script.load_gate is not None:
            script.load_gate.wait(GATE_TIMEOUT_S)
        if script.fail_load is not None:
            raise script.fail_load
        for i in range(1, script.load_steps + 1):
            time.sleep(script.load_delay_s)
            progress(i, script.load_steps)
        engine = FakeEngine(script, max_context, max_batch)
        engine.threads.add(threading.get_ident())
        engines.append(engine)
        return engine

    settings = {"model": Path("fake-model.gguf"), "port": 0, "worker_id": "test", **config}
    cfg = WorkerConfig(max_context=max_context, **settings)
    worker = Worker(
        cfg,
        backend="cpu",
        narrator=Narrator(
            cfg.worker_id,
            stream=log,
            model="fake-model",
            redactor=Redactor(mark_only=cfg.log_prompts),
        ),
        info_loader=info_loader,
        engine_loader=engine_loader,
        residency_check_timeout_s=residency_check_timeout_s,
    )
    app = create_app(worker.service)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: run_worker(worker, app, task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=10.0) as client:
            if wait_ready:
                with trio.fail_after(10):
                    await worker.ready.wait()
            yield Harness(worker, app, client, log, engines, script)
        for gate in (
            script.load_gate,
            script.prefill_gate,
            script.step_gate,
            script.residency_gate,
            script.encode_gate,
        ):
            if gate is not None:
                gate.set()  # never leave the engine thread waiting while we shut down
        with trio.fail_after(10):
            await worker.shutdown("test finished")
