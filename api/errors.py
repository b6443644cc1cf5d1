"""Error bodies and HTTP statuses: every refusal is `{"error": {"code", "message", ...}}`.

The body always comes from `WorkerError.to_body()`, so the stable codes in `runtime.errors`
are the whole vocabulary a client has to know.
"""

from __future__ import annotations

from quart import Response, jsonify

from runtime.errors import ErrorCode, WorkerError

STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN_HOST: 403,
    ErrorCode.LOADING: 503,
    ErrorCode.BUSY: 503,
    ErrorCode.DRAINING: 503,
    ErrorCode.INSUFFICIENT_VRAM: 503,
    ErrorCode.VRAM_OOM: 503,
}
RETRY_AFTER_S = {ErrorCode.BUSY: 1, ErrorCode.LOADING: 2}


def error_response(
    error: WorkerError, *, status: int | None = None, body: dict | None = None
) -> Response:
    """JSON error response; 503 BUSY/LOADING also say when to come back (Retry-After).

    `body`: another protocol's envelope for the same error (OpenAI's, api/openai_wire.py);
    status and headers stay this module's."""
    response = jsonify(error.to_body() if body is None else body)
    response.status_code = status if status is not None else STATUS.get(error.code, 500)
    retry = RETRY_AFTER_S.get(error.code)
    if retry is not None:
        response.headers["Retry-After"] = str(retry)
    if error.code is ErrorCode.PAYLOAD_TOO_LARGE:
        # The rest of the body is never read; close rather than make the client push it.
        response.headers["Connection"] = "close"
    return response
