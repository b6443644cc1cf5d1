"""The worker's cached health state: what `GET /health` reports, without asking the engine.

Actors write it (the loader while loading, the residency monitor on a violation, the supervisor
when draining); the HTTP front end only reads it. Everything runs on the trio thread, so plain
attribute writes need no lock, and a health answer costs a dict build, whatever the engine does.
"""

from __future__ import annotations

import enum
import time

import attrs


class Status(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"


@attrs.define
class ModelFacts:
    """What the loaded model tells about itself; fixed once the load completes."""

    quant_kind: str
    vram_bytes_used: int  # 0 on the cpu backend (its memory is host memory)
    tokenizer_kind: str
    vocab_size: int
    context_length: int  # tokens of KV cache per sequence (prompt + max_tokens must fit)
    max_batch: int = 1  # sequences decoded together, each with its own KV cache


@attrs.define
class WorkerState:
    worker_id: str
    model: str  # the model's display name (file stem) — known before the load starts
    backend: str  # "cpu" | "cuda", or the requested one until the loader resolves it
    status: Status = Status.LOADING
    load_percent: int = 0
    resident: bool = False
    facts: ModelFacts | None = None
    reason: str | None = None  # why unhealthy / draining, for humans
    started_monotonic: float = attrs.field(factory=time.monotonic)

    def set_load_progress(self, done: int, total: int) -> int:
        """Record load progress; returns the percent (0-100, never going backwards)."""
        percent = 100 if total <= 0 else min(100, (100 * done) // total)
        self.load_percent = max(self.load_percent, percent)
        return self.load_percent

    def mark_ready(self, facts: ModelFacts, backend: str) -> None:
        self.facts = facts
        self.backend = backend
        self.load_percent = 100
        self.resident = True
        if self.status is Status.LOADING:
            self.status = Status.READY

    def mark_unhealthy(self, reason: str) -> None:
        """The model's memory is no longer trustworthy (residency violation) or the load failed."""
        self.resident = False
        self.reason = reason
        if self.status is not Status.DRAINING:
            self.status = Status.UNHEALTHY

    def mark_draining(self, reason: str = "shutting down") -> None:
        self.status = Status.DRAINING
        self.reason = reason

    @property
    def accepting(self) -> bool:
        """New jobs are admitted only when ready (unhealthy means the weights may be corrupt)."""
        return self.status is Status.READY

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body) of `GET /health`: 200 only when ready."""
        facts = self.facts
        body = {
            "status": str(self.status),
            "model": self.model,
            "backend": self.backend,
            "resident": self.resident,
            "quant_kind": facts.quant_kind if facts else None,
            "vram_bytes_used": facts.vram_bytes_used if facts else 0,
            "tokenizer_kind": facts.tokenizer_kind if facts else None,
            "vocab_size": facts.vocab_size if facts else None,
            "context_length": facts.context_length if facts else None,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "load_percent": self.load_percent,
            "worker_id": self.worker_id,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return (200 if self.status is Status.READY else 503), body
