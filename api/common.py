"""What every front end's routes share: the correlation id, JSON bodies, streamed responses.

A streamed response takes the service's `JobStream` and the front end's own encoder (a batch
of job events -> bytes), so the native SSE protocol and any other protocol (OpenAI's chunks)
stream the same way: live, several events in one write when the socket fell behind, and a
disconnect cancels the job at once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from quart import Response, g, request

from actors.service import JobEvent, JobStream
from api.guard import on_request_end
from api.validation import parse_json_object
from runtime.errors import ErrorCode, InvalidRequest, WorkerError

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces

Encoder = Callable[[list[JobEvent]], bytes]


def correlation_id() -> str:
    """The request's correlation id: the client's (if well formed) or a new one."""
    taken = g.get("correlation_id")
    if taken:
        return taken
    given = request.headers.get(CORRELATION_HEADER, "")
    return given if _CORRELATION_RE.fullmatch(given) else uuid.uuid4().hex


async def json_body(max_bytes: int) -> dict:
    """The body as a JSON object; 400 (content type, JSON) or 413 (size) otherwise."""
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


def stream_response(stream: JobStream, encode: Encoder, content_type: str) -> Response:
    """A 200 whose body is `encode(batch)` for each batch of the job's events, live.

    Call it right after `service.submit` returned, before anything awaits: from here the
    stream is closed (its job cancelled if unfinished) when the request ends, even if the
    client left before the body generator started (api/guard.py, REL-1).
    """
    on_request_end(request.scope, stream.close)

    async def body():
        try:
            async for batch in stream:
                yield encode(batch)
        finally:
            stream.close()  # runs on cancellation and aclose() too; it never awaits

    response = Response(body(), status=200, content_type=content_type)
    response.timeout = None
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
