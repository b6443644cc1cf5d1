"""The ready callback (`--callback-url`): tell whoever started us that this worker now serves.

Sent once, after HTTP listens *and* the model is resident (the supervisor waits for `ready`):

    POST <callback-url>
    {"worker_id", "model_ref", "vram_bytes", "uri": "http://HOST:PORT" (the bound port, so
     --port 0 works), "memory_architecture": "vram-only",
     "capabilities": {"backend", "quant_kind", "max_context", "streaming", "cancel", ...}}

A 2xx answer is success. A transport failure, a timeout or a 5xx is retried (ATTEMPTS in all,
each bounded by ATTEMPT_TIMEOUT_S); a 4xx is a refusal and is not retried. When no attempt
succeeds the worker narrates why and stops with exit status 1: a pool manager that never heard
of us would never send work, and a worker nobody knows about only holds a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from runtime.config import WorkerConfig
from runtime.errors import ErrorCode, WorkerError
from runtime.narration import Narrator
from runtime.state import WorkerState

if TYPE_CHECKING:
    import httpx

# httpx is imported when a callback is sent, not at the worker's start: most workers have no
# --callback-url, and its import (~30 ms here, its CLI and all) came before the `startup` line.

ACTOR = "callback"
ATTEMPTS = 3
ATTEMPT_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 0.5


class CallbackFailed(WorkerError):
    code = ErrorCode.INTERNAL


def ready_payload(config: WorkerConfig, state: WorkerState, uri: str) -> dict:
    facts = state.facts
    assert facts is not None, "the ready callback is sent only once the model is loaded"
    return {
        "worker_id": config.worker_id,
        "model_ref": config.resolved_model_ref(),
        "vram_bytes": facts.vram_bytes_used,
        "uri": uri,
        "memory_architecture": "vram-only",
        "capabilities": {
            "backend": state.backend,
            "quant_kind": facts.quant_kind,
            "max_context": facts.context_length,
            "streaming": True,
            "cancel": True,
            "metrics": True,
            "shutdown": True,
        },
    }


async def _attempt(client: httpx.AsyncClient, url: str, payload: dict) -> tuple[bool, bool, str]:
    """(ok, worth retrying, what happened)."""
    import httpx

    with trio.move_on_after(ATTEMPT_TIMEOUT_S):
        try:
            response = await client.post(url, json=payload)
        except httpx.HTTPError as error:
            return False, True, f"{type(error).__name__}: {error}"
        if response.is_success:
            return True, False, f"HTTP {response.status_code}"
        detail = response.text[:200].strip()
        return False, response.status_code >= 500, f"HTTP {response.status_code} {detail}".strip()
    return False, True, f"no answer within {ATTEMPT_TIMEOUT_S:g} s"


async def announce_ready(
    config: WorkerConfig, state: WorkerState, *, uri: str, narrator: Narrator
) -> None:
    """POST the ready payload to `config.callback_url`; raise `CallbackFailed` if nobody took it."""
    url = config.callback_url
    assert url is not None
    narrator = narrator.child(actor=ACTOR)
    payload = ready_payload(config, state, uri)
    reason = "not attempted"
    import httpx

    async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_S) as client:
        for attempt in range(1, ATTEMPTS + 1):
            ok, retry, reason = await _attempt(client, url, payload)
            if ok:
                narrator.emit(
                    "ready_callback",
                    target=url,
                    human=f"Told {url} that this worker is ready at {uri} ({reason}).",
                    uri=uri,
                    attempt=attempt,
                )
                return
            narrator.emit(
                "ready_callback_attempt_failed",
                level="warning",
                target=url,
                human=f"Ready callback attempt {attempt}/{ATTEMPTS} to {url} failed: {reason}.",
                attempt=attempt,
                detail=reason,
            )
            if not retry:
                break
            if attempt < ATTEMPTS:
                await trio.sleep(RETRY_PAUSE_S)
    narrator.emit(
        "ready_callback_failed",
        level="error",
        target=url,
        human=f"The ready callback to {url} failed ({reason}); the worker stops.",
        detail=reason,
    )
    raise CallbackFailed(f"ready callback to {url} failed: {reason}")
