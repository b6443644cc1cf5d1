"""Stable error codes and the typed exceptions that carry them.

Every failure that can reach a client or the process exit status is a `WorkerError` with one of
the codes below; the HTTP layer turns it into `{"error": {"code", "message", ...}}` and the SSE
layer into a terminal `error` event. Codes are part of the protocol: never rename one.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"
    VRAM_OOM = "VRAM_OOM"
    CUDA_ERROR = "CUDA_ERROR"
    INFERENCE_TIMEOUT = "INFERENCE_TIMEOUT"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    BUSY = "BUSY"
    LOADING = "LOADING"
    DRAINING = "DRAINING"
    CONFLICT = "CONFLICT"
    NOT_FOUND = "NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # the body did not arrive in time (408)
    UNAUTHORIZED = "UNAUTHORIZED"  # --api-key is set and the bearer token is missing or wrong
    FORBIDDEN_HOST = "FORBIDDEN_HOST"  # the Host header is not on the allow-list
    NON_FINITE_LOGITS = "NON_FINITE_LOGITS"
    MODEL_INCOMPATIBLE = "MODEL_INCOMPATIBLE"  # pool preflight: a file no worker here can serve


#: Codes after which the same request may succeed if simply sent again.
RETRIABLE = frozenset(
    {ErrorCode.BUSY, ErrorCode.LOADING, ErrorCode.VRAM_OOM, ErrorCode.INFERENCE_TIMEOUT}
)


CLIP_CHARS = 32  # client-supplied names and values keep this much in errors and logs


def clip(text: str, keep: int = CLIP_CHARS) -> str:
    """Client text as an error or a log line may show it: a short prefix and the length (REL-6).

    A 1 MB field name must not become a 1 MB error body and two log lines of it.
    """
    if len(text) <= keep:
        return text
    return f"{text[:keep]}... ({len(text)} characters)"


class WorkerError(Exception):
    """An error with a stable code, a human message and (for bad input) the field at fault."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, field: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE

    def to_body(self) -> dict:
        body: dict = {"code": str(self.code), "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class ModelLoadError(WorkerError):
    """The model file is missing, malformed, or uses something we do not support."""

    code = ErrorCode.MODEL_LOAD_FAILED


class InvalidRequest(WorkerError):
    code = ErrorCode.INVALID_REQUEST


class InsufficientVram(WorkerError):
    code = ErrorCode.INSUFFICIENT_VRAM


class VramOom(WorkerError):
    code = ErrorCode.VRAM_OOM


class CudaError(WorkerError):
    """A CUDA failure. `fatal` means the context is poisoned and the process must exit."""

    code = ErrorCode.CUDA_ERROR

    def __init__(self, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


class Cancelled(WorkerError):
    code = ErrorCode.CANCELLED


class NonFiniteLogits(WorkerError):
    """The model computed a NaN or infinite logit: the job ends with this error, never with a
    token picked from garbage (an argmax over NaN is token 0, often EOS: a silent empty answer).
    Not retriable: the same request computes the same numbers. The worker goes on serving."""

    code = ErrorCode.NON_FINITE_LOGITS

    @classmethod
    def at(cls, draw: int, detail: str) -> NonFiniteLogits:
        return cls(
            f"the model computed non-finite logits for output token {draw} ({detail}); "
            "the model file or its numbers are broken, so the job is stopped"
        )


def first_error(error: BaseException) -> BaseException:
    """The first non-cancellation leaf of a (possibly nested) exception group."""
    import trio  # here, not at the top: `--help` and the startup's first steps need no trio

    while isinstance(error, BaseExceptionGroup):
        leaves = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)] or list(
            error.exceptions
        )
        error = leaves[0]
    return error


def describe(error: BaseException) -> str:
    """`Type: message` of the first real error inside `error` (for crash narration)."""
    error = first_error(error)
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}"
