"""The native protocol's front end: POST /execute (SSE), POST /cancel, GET /health.

Routes only translate: JSON in -> `GenerationRequest` -> `WorkerService` -> SSE or JSON out. The
wire format is specs/decisions/0006-sse-protocol.md; this module's encoder (`encode_events`)
is the only place that knows it. `/health` reads cached state only (and is also answered by the
ASGI fast path), so it answers in microseconds whatever the engine is doing.
"""

from __future__ import annotations

import json

from quart import Blueprint, Response, jsonify
from quart_trio import QuartTrio

from actors.service import End, Failed, JobEvent, Started, Token, WorkerService
from api.common import correlation_id, json_body, stream_response
from api.errors import error_response
from api.fast_paths import FastRoute
from api.sse import CONTENT_TYPE, encode_event
from api.validation import (
    EXECUTE_FIELDS,
    loggable_job_id,
    validate_cancel,
    validate_execute,
)
from runtime.errors import ErrorCode, WorkerError
from runtime.redaction import strings_in

BODY_KEYS = EXECUTE_FIELDS | {"role", "content"}
NOT_CLIENT_TEXT = frozenset({"job_id", "role"})  # an identifier and a fixed vocabulary


def event_bytes(event: JobEvent, *, job_id: str, model: str) -> bytes:
    if isinstance(event, Token):
        return encode_event("token", {"t": event.text, "i": event.index})
    if isinstance(event, Started):
        return encode_event(
            "started",
            {
                "job_id": job_id,
                "model": model,
                "started_at": event.started_at,
                "seed": event.seed,
                "prompt_tokens": event.prompt_tokens,
            },
        )
    if isinstance(event, End):
        return encode_event(
            "end",
            {
                "tokens_out": event.tokens_out,
                "decode_time_ms": event.decode_time_ms,
                "stop_reason": event.stop_reason,
            },
        )
    assert isinstance(event, Failed)
    return encode_event(
        "error", {"code": str(event.code), "message": event.message, "retriable": event.retriable}
    )


def sse_encoder(job_id: str, model: str):
    def encode_events(batch: list[JobEvent]) -> bytes:
        return b"".join(event_bytes(e, job_id=job_id, model=model) for e in batch)

    return encode_events


def install(app: QuartTrio, service: WorkerService) -> dict[str, FastRoute]:
    blueprint = Blueprint("native", __name__)
    max_body = service.config.max_body_bytes

    def health_answer() -> tuple[int, str, bytes]:
        status, body = service.health()
        return status, "application/json", json.dumps(body, separators=(",", ":")).encode()

    @blueprint.get("/health")
    async def health() -> Response:
        status, body = service.health()
        response = jsonify(body)
        response.status_code = status
        return response

    @blueprint.post("/execute")
    async def execute() -> Response:
        correlation = correlation_id()
        body = await json_body(max_body)
        # Whatever text the body holds stays out of the logs, valid or not (W-1902).
        with service.client_texts(strings_in(body, skip=NOT_CLIENT_TEXT, known=BODY_KEYS)):
            admission = service.admission_error()
            if admission is not None:
                return error_response(admission, status=503)
            try:
                stream = await service.submit(validate_execute(body), correlation)
            except WorkerError as error:
                service.refused(loggable_job_id(body.get("job_id")), correlation, error)
                status = 503 if error.code is ErrorCode.INTERNAL else None
                return error_response(error, status=status)
        encode = sse_encoder(stream.job_id, service.model)
        return stream_response(stream, encode, CONTENT_TYPE)

    @blueprint.post("/cancel")
    async def cancel() -> Response:
        correlation = correlation_id()
        job_id = validate_cancel(await json_body(max_body))
        if not service.cancel(job_id, correlation_id=correlation):
            raise WorkerError(f"no job {job_id} is known", code=ErrorCode.NOT_FOUND)
        response = jsonify({"job_id": job_id, "status": "accepted"})
        response.status_code = 202
        return response

    app.register_blueprint(blueprint)
    return {"/health": health_answer}
