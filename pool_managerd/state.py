"""A worker's record in the pool and the one place its status changes.

    starting ──► ready ──► draining ──► stopping ──► stopped
        │          │           │            ▲
        │          └───────────┴──► (stop) ─┘
        └──► stopping (a stop before the worker is ready)
    starting / ready / draining ──► failed   (died, missed health polls, never called back)

`stopped` and `failed` are final: the pool never restarts a worker (an operator or scheduler
starts a new one). A record keeps holding its device memory, in the accounting, for as long as
its process lives (`alive`), whatever its status: a failed worker being killed still holds it,
a crashed one gives it back the moment its exit is seen.
"""

from __future__ import annotations

import collections
import datetime
import enum
from pathlib import Path
from typing import Any

import attrs


class WorkerStatus(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


S = WorkerStatus
NEXT: dict[WorkerStatus, frozenset[WorkerStatus]] = {
    S.STARTING: frozenset({S.READY, S.STOPPING, S.FAILED}),
    S.READY: frozenset({S.DRAINING, S.STOPPING, S.FAILED}),
    S.DRAINING: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
    S.FAILED: frozenset(),
}
FINAL = frozenset({S.STOPPED, S.FAILED})


class BadTransition(Exception):
    """A status change the lifecycle does not allow (a bug in the pool, never user input)."""


def utc_now_iso() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.define(eq=False)
class WorkerRecord:
    id: str
    model_ref: str
    path: Path
    gpu: int | str  # the device id
    reserved_bytes: int  # the preflight estimate, held from admission on
    max_context: int
    max_batch: int = 1  # sequence slots the worker allocates (each a KV cache of max_context)
    log_tail_lines: int = 20
    status: WorkerStatus = WorkerStatus.STARTING
    started_at: str = attrs.field(factory=utc_now_iso)
    ready_at: str | None = None
    pid: int | None = None
    uri: str | None = None
    vram_used: int | None = None  # what the worker reported in its ready callback
    capabilities: dict[str, Any] = attrs.field(factory=dict)
    memory_architecture: str | None = None
    load_percent: int = 0  # from the worker's model_load_progress narration
    alive: bool = True  # reserved or running: counts in the device's allocation
    exit_code: int | None = None  # the process's status; negative: killed by that signal
    reason: str | None = None  # why failed / how stopped, for humans
    stopped_by: str | None = None  # "shutdown" | "SIGTERM" | "SIGKILL" once it has exited
    health_misses: int = 0
    log_tail: collections.deque = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.log_tail = collections.deque(maxlen=self.log_tail_lines)

    def move(self, new: WorkerStatus, *, reason: str | None = None) -> WorkerStatus:
        """Change status, returning the old one; BadTransition if the lifecycle forbids it."""
        old = self.status
        if new not in NEXT[old]:
            raise BadTransition(f"worker {self.id}: {old} -> {new} is not allowed")
        self.status = new
        if reason is not None:
            self.reason = reason
        return old

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def accounted_bytes(self) -> int:
        """Memory charged to the device: the reservation, or the worker's own figure once it
        called back (a cpu worker reports no VRAM: its reservation stands)."""
        if not self.alive:
            return 0
        return self.vram_used or self.reserved_bytes

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "model_ref": self.model_ref,
            "gpu": self.gpu,
            "vram_used": self.accounted_bytes,
            "vram_reserved": self.reserved_bytes if self.alive else 0,
            "uri": self.uri,
            "pid": self.pid,
            "status": str(self.status),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "exit_code": self.exit_code,
            "load_percent": self.load_percent,
            "max_context": self.max_context,
            "max_batch": self.max_batch,
            "path": str(self.path),
        }
        if self.reason is not None:
            body["reason"] = self.reason
        if self.stopped_by is not None:
            body["stopped_by"] = self.stopped_by
        if self.capabilities:
            body["capabilities"] = self.capabilities
        if self.status is WorkerStatus.FAILED:
            body["last_log_lines"] = list(self.log_tail)
        return body
