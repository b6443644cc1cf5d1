"""The quart-trio app: POST /execute (SSE), POST /cancel, GET /health.

Routes only translate: JSON in -> `Scheduler` calls -> SSE or JSON out. The app holds no state
of its own; `worker` (actors.supervisor.Worker) gives it the cached state, the scheduler and,
once loaded, the model's tokenizer. `/health` reads cached state only, so it answers in
microseconds whatever the engine is doing.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import trio
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from actors.jobs import End, Failed, Job, JobHandle, Started, Token
from api.errors import error_response
from api.prompt import prompt_token_ids
from api.sse import CONTENT_TYPE, encode_event
from api.validation import parse_json_object, validate_cancel, validate_execute
from runtime.errors import ErrorCode, InvalidRequest, WorkerError

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces


def _correlation_id() -> str:
    given = request.headers.get(CORRELATION_HEADER, "")
    return given if _CORRELATION_RE.fullmatch(given) else uuid.uuid4().hex


def event_bytes(event: Any, *, job_id: str, model: str) -> bytes:
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


async def sse_stream(handle: JobHandle, worker: Any):
    """Forward a job's events as SSE. Stopping early (client gone) cancels the job at once."""
    finished = False
    model = worker.state.model
    worker.open_streams += 1
    try:
        async for event in handle.events:
            # Live: one event goes out as soon as it exists. If the socket fell behind (fast GPU,
            # slow client), everything already waiting goes out in the same write instead of
            # paying the per-write cost once per token.
            batch = [event]
            while not isinstance(batch[-1], End | Failed):
                try:
                    batch.append(handle.events.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            yield b"".join(event_bytes(e, job_id=handle.job_id, model=model) for e in batch)
            if isinstance(batch[-1], End | Failed):
                finished = True
                return
    finally:
        # Runs on cancellation and on aclose() too, so it must not await.
        worker.open_streams -= 1
        if not finished:
            handle.client_gone()


async def _json_body(max_bytes: int) -> dict:
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise InvalidRequest(
            f"Content-Type must be application/json, got {mimetype or 'none'}", field="content-type"
        )
    length = request.content_length
    if length is not None and length > max_bytes:
        raise WorkerError(f"body over {max_bytes} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
    body = await request.get_data(cache=False)  # MAX_CONTENT_LENGTH guards chunked bodies
    return parse_json_object(body)


def create_app(worker: Any) -> QuartTrio:
    app = QuartTrio("worker-orcd")
    app.config.update(
        MAX_CONTENT_LENGTH=worker.config.max_body_bytes,
        RESPONSE_TIMEOUT=None,  # streams last as long as generation does
        JSON_SORT_KEYS=False,
    )
    state, scheduler = worker.state, worker.scheduler
    narrator = worker.narrator.child(actor="http")

    @app.errorhandler(WorkerError)
    async def _worker_error(error: WorkerError) -> Response:
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    async def _too_large(error: RequestEntityTooLarge) -> Response:
        limit = worker.config.max_body_bytes
        return error_response(
            WorkerError(f"body over {limit} bytes", code=ErrorCode.PAYLOAD_TOO_LARGE)
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = ErrorCode.NOT_FOUND if error.code == 404 else ErrorCode.INVALID_REQUEST
        status = error.code if error.code in (404, 405) else 400
        return error_response(
            WorkerError(error.description or error.name, code=code), status=status
        )

    @app.errorhandler(Exception)
    async def _internal(error: Exception) -> Response:
        narrator.emit(
            "error",
            level="error",
            target=request.path,
            correlation_id=g.get("correlation_id"),
            human=f"A request failed unexpectedly: {type(error).__name__}: {error}",
            code=str(ErrorCode.INTERNAL),
        )
        return error_response(WorkerError(f"internal error: {type(error).__name__}"))

    @app.before_request
    async def _take_correlation() -> None:
        g.correlation_id = _correlation_id()

    @app.after_request
    async def _echo_correlation(response: Response) -> Response:
        response.headers[CORRELATION_HEADER] = g.get("correlation_id") or _correlation_id()
        return response

    @app.get("/health")
    async def health() -> Response:
        status, body = state.health()
        response = jsonify(body)
        response.status_code = status
        return response

    @app.post("/execute")
    async def execute() -> Response:
        correlation_id = g.correlation_id
        body = await _json_body(worker.config.max_body_bytes)
        admission = scheduler.admission_error()
        if admission is not None:
            return error_response(admission, status=503)
        try:
            req = validate_execute(body)
            # 409 / 503 BUSY before the tokenizing work; from here /cancel finds the job.
            reservation = scheduler.reserve(req.job_id)
            try:
                info, context_length = worker.info, state.facts.context_length
                prompt_ids, prompt_fp = await trio.to_thread.run_sync(
                    prompt_token_ids, info, req, context_length
                )
                job = Job(req.job_id, prompt_ids, req, correlation_id, prompt_fp)
                handle = scheduler.submit(job, reservation)
            finally:
                scheduler.unreserve(reservation)
        except WorkerError as error:
            narrator.emit(
                "execute_rejected",
                level="warning",
                target=str(body.get("job_id", ""))[:128],
                correlation_id=correlation_id,
                human=f"Refused a job: {error.code} {error.message}",
                code=str(error.code),
                field=error.field,
            )
            status = 503 if error.code is ErrorCode.INTERNAL else None
            return error_response(error, status=status)
        response = Response(sse_stream(handle, worker), status=200, content_type=CONTENT_TYPE)
        response.timeout = None
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    @app.post("/cancel")
    async def cancel() -> Response:
        correlation_id = g.correlation_id
        job_id = validate_cancel(await _json_body(worker.config.max_body_bytes))
        if not scheduler.cancel(job_id, correlation_id=correlation_id):
            raise WorkerError(f"no job {job_id} is known", code=ErrorCode.NOT_FOUND)
        response = jsonify({"job_id": job_id, "status": "accepted"})
        response.status_code = 202
        return response

    return app
