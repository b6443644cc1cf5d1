"""The pool's refusals: a stable code from `runtime.errors`, an HTTP status and details.

`PoolError` is a `WorkerError`, so its body has the same shape as every other error of the
project (`{"error": {"code", "message", "field"?}}`) plus `details`: the numbers behind a
refusal (bytes needed and available, the device, the file's problem), so that an operator or
a scheduler can act on it without parsing the message.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import ErrorCode, WorkerError

#: HTTP status of each code the pool answers with. INSUFFICIENT_VRAM is a 409 here (the worker
#: answers 503): the device's current allocation conflicts with the request, and stopping a
#: worker or choosing another device changes the answer; retrying the same request does not.
STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INSUFFICIENT_VRAM: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.MODEL_INCOMPATIBLE: 422,
    ErrorCode.DRAINING: 503,
}


class PoolError(WorkerError):
    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message, code=code, field=field)
        self.details = details or {}

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 500)

    def to_body(self) -> dict:
        body = super().to_body()
        if self.details:
            body["error"]["details"] = self.details
        return body


def invalid(message: str, field: str) -> PoolError:
    return PoolError(message, code=ErrorCode.INVALID_REQUEST, field=field)


def not_found(message: str, field: str, **details: Any) -> PoolError:
    return PoolError(message, code=ErrorCode.NOT_FOUND, field=field, details=details)


def conflict(message: str, field: str | None = None, **details: Any) -> PoolError:
    return PoolError(message, code=ErrorCode.CONFLICT, field=field, details=details)
