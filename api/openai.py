"""OpenAI's front end: GET /v1/models, POST /v1/chat/completions and /v1/completions.

Routes translate only: OpenAI's JSON -> `GenerationRequest` (api/openai_schema.py) ->
`WorkerService` -> OpenAI's objects and chunks (api/openai_wire.py). Admission, tokenizing,
the chat template, cancellation, counters and redaction are the service's, as for /execute.

- Every refusal before the answer starts is an HTTP error in OpenAI's envelope with its status
  (400/404/409/413/503, Retry-After on BUSY and LOADING). The route waits for the job's first
  event (`started`, sent when the executor takes the job, before prefill) before it answers, so
  a job that ends while queued (cancelled, drained) is an HTTP error too, never a 200.
- The response id is the job id: `chatcmpl-<24 hex>` / `cmpl-<24 hex>`, or the prefix and the
  client's `X-Request-Id` header (as vLLM does), so `POST /cancel {"job_id": id}` stops it.
  The response echoes it in `X-Request-Id`.
- A client that goes away stops its job within one step, streamed or not: the stream's
  `close()` runs when the response generator is closed or the handler is cancelled
  (quart-trio cancels a request's handler when its connection closes).
"""

from __future__ import annotations

import secrets
import time

from quart import Blueprint, Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from actors.service import End, Failed, JobEvent, JobStream, Started, Token, WorkerService
from api.common import correlation_id, json_body, stream_response
from api.errors import STATUS, error_response
from api.fast_paths import FastRoute
from api.guard import on_request_end
from api.openai_schema import Kind, ServedModel, parse_request
from api.openai_wire import ChunkEncoder, completion_body, error_body
from api.sse import CONTENT_TYPE
from api.validation import JOB_ID_RE
from runtime.errors import ErrorCode, InvalidRequest, WorkerError
from runtime.redaction import strings_in

PREFIX: dict[Kind, str] = {"chat": "chatcmpl-", "completion": "cmpl-"}
REQUEST_ID_HEADER = "X-Request-Id"
#: Values of these keys are identifiers or fixed vocabularies, not client text.
NOT_CLIENT_TEXT = frozenset({"role", "type"})
#: A job that ended before it started: CANCELLED there means drained or cancelled while queued.
STATUS_BEFORE_START = {**STATUS, ErrorCode.CANCELLED: 503}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def openai_error(error: WorkerError, *, status: int | None = None) -> Response:
    if status is None:
        status = STATUS_BEFORE_START.get(error.code, 500)
    body = error_body(error.code, error.message, error.field)
    return error_response(error, status=status, body=body)


def _job_id(kind: Kind) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        return PREFIX[kind] + secrets.token_hex(12)
    job_id = PREFIX[kind] + given
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequest(
            f"{REQUEST_ID_HEADER} must be 1-{128 - len(PREFIX[kind])} characters of "
            "A-Z a-z 0-9 . _ : -",
            field=REQUEST_ID_HEADER.lower(),
        )
    return job_id


class _Prefetched:
    """A JobStream whose first batch was already read (to answer errors before a 200)."""

    def __init__(self, first: list[JobEvent], stream: JobStream):
        self._first: list[JobEvent] | None = first
        self._stream = stream

    def __aiter__(self) -> _Prefetched:
        return self

    async def __anext__(self) -> list[JobEvent]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._stream.__anext__()

    def close(self) -> None:
        self._stream.close()


async def _collect(first: list[JobEvent], stream: JobStream) -> tuple[str, Started, End | Failed]:
    """Read a job to its end (non-streamed answers); the caller closes the stream."""
    texts: list[str] = []
    started: Started | None = None
    final: End | Failed | None = None
    batch: list[JobEvent] | None = first
    while final is None:
        if batch is None:
            try:
                batch = await stream.__anext__()
            except StopAsyncIteration:
                final = Failed(ErrorCode.INTERNAL, "the job's event stream ended early")
                break
        for event in batch:
            if isinstance(event, Token):
                texts.append(event.text)
            elif isinstance(event, Started):
                started = event
            elif isinstance(event, End | Failed):
                final = event
        batch = None
    assert started is not None or isinstance(final, Failed)
    return "".join(texts), started, final


def install(app: QuartTrio, service: WorkerService) -> dict[str, FastRoute]:
    blueprint = Blueprint("openai", __name__, url_prefix="/v1")
    max_body = service.config.max_body_bytes
    model = ServedModel.from_stem(service.model)
    created = int(time.time())
    listing = {"id": model.id, "object": "model", "created": created, "owned_by": "worker-orcd"}

    @blueprint.errorhandler(WorkerError)
    async def _worker_error(error: WorkerError) -> Response:
        return openai_error(error)

    @blueprint.errorhandler(RequestEntityTooLarge)
    async def _too_large(error: RequestEntityTooLarge) -> Response:
        message = f"body over {max_body} bytes"
        return openai_error(WorkerError(message, code=ErrorCode.PAYLOAD_TOO_LARGE))

    @blueprint.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code if error.code in (404, 405) else 400
        code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.INVALID_REQUEST
        return openai_error(WorkerError(error.description or error.name, code=code), status=status)

    @blueprint.get("/models")
    async def models() -> Response:
        return jsonify({"object": "list", "data": [listing]})

    @blueprint.get("/models/<path:name>")
    async def one_model(name: str) -> Response:
        if name not in model.accepted:
            message = (
                f"the model {name[:200]!r} does not exist here; this worker serves {model.id!r}"
            )
            raise WorkerError(message, code=ErrorCode.NOT_FOUND, field="model")
        return jsonify({**listing, "id": name})

    @blueprint.post("/chat/completions")
    async def chat() -> Response:
        return await _generate("chat")

    @blueprint.post("/completions")
    async def completions() -> Response:
        return await _generate("completion")

    @blueprint.route("/<path:rest>", methods=ALL_METHODS)
    async def unknown(rest: str) -> Response:
        message = f"Invalid URL ({request.method} /v1/{rest[:200]})"
        return openai_error(WorkerError(message, code=ErrorCode.NOT_FOUND), status=404)

    async def _generate(kind: Kind) -> Response:
        correlation = correlation_id()
        job_id = _job_id(kind)
        body = await json_body(max_body)
        # Whatever text the body holds stays out of the logs, valid or not (W-1902).
        with service.client_texts(strings_in(body, skip=NOT_CLIENT_TEXT)):
            admission = service.admission_error()
            if admission is not None:
                return openai_error(admission, status=503)
            try:
                parsed = parse_request(kind, body, model, job_id)
                stream = await service.submit(parsed.generation, correlation)
                # However the request ends (the client gone while queued, too), the job stops.
                on_request_end(request.scope, stream.close)
            except WorkerError as error:
                service.refused(job_id, correlation, error)
                return openai_error(error, status=503 if error.code is ErrorCode.INTERNAL else None)
        head = {"id": job_id, "created": int(time.time()), "model": body.get("model") or model.id}
        headers = {REQUEST_ID_HEADER: job_id}
        try:
            first = await stream.__anext__()  # queued until the executor takes the job
            if parsed.stream and not isinstance(first[0], Failed):
                encode = ChunkEncoder(kind, head, include_usage=parsed.include_usage)
                response = stream_response(_Prefetched(first, stream), encode, CONTENT_TYPE)
                return _with(response, headers)  # the response's generator closes the stream
            # Not streamed, or it ended before it started (no 200 for that): read to the end.
            text, started, final = await _collect(first, stream)
        except BaseException:
            stream.close()  # cancelled (the client went away) or failed: the job stops too
            raise
        stream.close()
        if isinstance(final, Failed):
            return _with(openai_error(WorkerError(final.message, code=final.code)), headers)
        answer = jsonify(completion_body(kind, head, text, final, started.prompt_tokens))
        return _with(answer, headers)

    app.register_blueprint(blueprint)
    return {}


def _with(response: Response, headers: dict[str, str]) -> Response:
    response.headers.update(headers)
    return response
