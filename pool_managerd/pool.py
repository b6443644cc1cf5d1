"""The pool: admits, spawns, watches and stops workers; the one owner of their records.

    pool nursery (run_pool)
      http              hypercorn serving the /v2 API (pool_managerd.api)
      signals           SIGTERM/SIGINT -> shutdown(): stop every worker, then the HTTP server
      worker <id>       one task per worker process, its own nursery:
        relay           the worker's stdout+stderr -> the pool's log (tagged), its last lines,
                        load progress
        watch           the ready deadline, then the health poller
        stop            the stop escalation, when asked (or when the worker failed)
      preload <path>    one task per file being read into the page cache

Everything runs on the trio thread, so records change without locks; the admission check and
the reservation are one synchronous step (no await between them), so two starts racing for one
device cannot both be admitted.
"""

from __future__ import annotations

import functools
import itertools
import json
import signal
import sys
from typing import Any

import httpx
import trio

from pool_managerd.config import PoolConfig
from pool_managerd.errors import PoolError, conflict, not_found
from pool_managerd.events import EventBus
from pool_managerd.health import poll_health
from pool_managerd.inventory import Device, Inventory
from pool_managerd.model_cache import ModelCache
from pool_managerd.model_refs import resolve_model_ref
from pool_managerd.preflight import check_fits, examine
from pool_managerd.requests import ReadyCallback, StartRequest
from pool_managerd.spawner import (
    WorkerProcess,
    relay_lines,
    spawn,
    stop_process,
    worker_command,
)
from pool_managerd.state import WorkerRecord, WorkerStatus, utc_now_iso
from runtime.errors import ErrorCode
from runtime.narration import Narrator

S = WorkerStatus
#: A worker may report up to this much more memory than its preflight estimate (the estimate
#: is the engine's own buffer table, so any real excess means the accounting is wrong).
VRAM_SLACK = 0.05
READY_PATH = "/v2/internal/workers/ready"


class WorkerHandle:
    """The live parts of one worker: its process, its nursery, its two milestones."""

    def __init__(self, record: WorkerRecord, device: Device):
        self.record = record
        self.device = device
        self.proc: WorkerProcess | None = None
        self.nursery: trio.Nursery | None = None
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.stop_requested = False


class Pool:
    def __init__(self, config: PoolConfig, inventory: Inventory, narrator: Narrator):
        self.config = config
        self.inventory = inventory
        self.narrator = narrator.child(actor="pool")
        self.events = EventBus()
        self.models = ModelCache(self.events, narrator)
        self.workers: dict[str, WorkerRecord] = {}
        self.handles: dict[str, WorkerHandle] = {}
        self.callback_url: str | None = None  # set once the API listens
        self.shutting_down = False
        self.http = httpx.AsyncClient()
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    # -- accounting -----------------------------------------------------------------------------

    def device_views(self) -> list[dict[str, Any]]:
        return [self.device_view(d) for d in self.inventory.devices.values()]

    def device_view(self, device: Device) -> dict[str, Any]:
        """The device's memory as the pool hands it out.

        available = min(total - allocated, free now - reservations not yet resident): the first
        term is our own accounting, the second sees memory taken by others (and by starting
        workers the device does not show as used yet).
        """
        memory = self.inventory.memory(device)
        total = memory.total
        if self.config.memory_limit_bytes is not None:
            total = min(total, self.config.memory_limit_bytes)
        mine = [r for r in self.workers.values() if r.gpu == device.id and r.alive]
        allocated = sum(r.accounted_bytes for r in mine)
        pending = sum(r.reserved_bytes for r in mine if r.status is S.STARTING)
        available = max(0, min(total - allocated, memory.free - pending))
        return {
            "id": device.id,
            "kind": device.kind,
            "name": device.name,
            "total_vram": total,
            "allocated_vram": allocated,
            "available_vram": available,
            "device_total": memory.total,
            "device_used": memory.used,
            "device_free": memory.free,
            "workers": [r.id for r in mine],
        }

    async def state(self) -> dict[str, Any]:
        workers = [r.to_json() for r in self.workers.values()]
        by_pid: dict[int, int] = {}
        for device in self.inventory.devices.values():
            by_pid.update(self.inventory.process_memory(device))
        for body in workers:
            if body["pid"] in by_pid:
                body["vram_nvml"] = by_pid[body["pid"]]  # what the driver says the process holds
        return {
            "pool_id": self.config.pool_id,
            "backend": self.inventory.backend,
            "shutting_down": self.shutting_down,
            "gpus": self.device_views(),
            "workers": workers,
            "models": await self.models.to_json(),
        }

    # -- start ----------------------------------------------------------------------------------

    async def start(self, request: StartRequest) -> WorkerRecord:
        """Preflight, reserve and spawn; returns the record (status `starting`) or raises."""
        self._refuse_when_shutting_down()
        device = self.inventory.find(request.gpu_id)
        if device is None:
            raise not_found(
                f"no device {request.gpu_id!r} in this pool",
                "gpu_id",
                devices=list(self.inventory.devices),
            )
        path = await trio.to_thread.run_sync(
            functools.partial(
                resolve_model_ref,
                request.model_ref,
                hf_cache=self.config.hf_cache,
                hf_download=self.config.hf_download,
            )
        )
        facts = await trio.to_thread.run_sync(
            functools.partial(
                examine,
                path,
                device_kind=device.kind,
                max_context=request.max_context or self.config.max_context,
                max_batch=self.config.max_batch,
            )
        )
        self._refuse_when_shutting_down()
        # From here to the reservation: no await (see the module docstring).
        view = self.device_view(device)
        check_fits(
            facts,
            device_id=device.id,
            total=view["total_vram"],
            allocated=view["allocated_vram"],
            available=view["available_vram"],
        )
        record = WorkerRecord(
            id=f"{self.config.pool_id}-w{next(self._ids)}",
            model_ref=request.model_ref,
            path=path,
            gpu=device.id,
            reserved_bytes=facts.bytes_needed,
            max_context=facts.max_context,
            max_batch=facts.max_batch,
            log_tail_lines=self.config.log_tail_lines,
        )
        self.workers[record.id] = record
        handle = self.handles[record.id] = WorkerHandle(record, device)
        self._narrate_status(
            record,
            None,
            human=f"Starting worker {record.id}: {path.name} "
            f"on {device.id}, {facts.bytes_needed} bytes reserved.",
        )
        await self._nursery.start(self._run_worker, handle)
        return record

    def _refuse_when_shutting_down(self) -> None:
        if self.shutting_down:
            raise PoolError("the pool is shutting down", code=ErrorCode.DRAINING)

    async def _run_worker(self, handle: WorkerHandle, *, task_status=trio.TASK_STATUS_IGNORED):
        record = handle.record
        cmd = worker_command(
            worker_id=record.id,
            model_path=record.path,
            model_ref=record.model_ref,
            backend=handle.device.kind,
            gpu_device=handle.device.ordinal,
            max_context=record.max_context,
            max_batch=record.max_batch,
            host=self.config.callback_host(),
            callback_url=self.callback_url,
        )
        try:
            handle.proc = spawn(cmd)
        except OSError as error:
            record.alive = False
            self._fail(handle, f"cannot start the worker process: {error}")
            handle.exited.set()
            task_status.started()
            return
        record.pid = handle.proc.pid
        async with trio.open_nursery() as nursery:
            handle.nursery = nursery
            task_status.started()
            nursery.start_soon(self._watch, handle)
            async with handle.proc.stdout:
                await relay_lines(handle.proc.stdout, functools.partial(self._on_line, record))
            code = await handle.proc.wait()
            nursery.cancel_scope.cancel()
        self._on_exit(handle, code)

    # -- what a worker says ---------------------------------------------------------------------

    def _on_line(self, record: WorkerRecord, line: str) -> None:
        """A line of the worker's output: kept in its tail, written to the pool's log tagged."""
        if not line.strip():
            return
        record.log_tail.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("worker_id") == record.id:
            # Already narration tagged with the worker's id: pass it on as it is.
            _write_log_line(line)
            if event.get("action") == "model_load_progress" and isinstance(
                event.get("percent"), int
            ):
                record.load_percent = event["percent"]
                self.events.publish(
                    "worker_load_progress", worker_id=record.id, percent=record.load_percent
                )
            return
        self.narrator.emit(
            "worker_output",
            actor="spawner",
            target=record.id,
            human=line[:1000],
            worker=record.id,
        )

    async def ready_callback(self, callback: ReadyCallback) -> WorkerRecord:
        record = self.workers.get(callback.worker_id)
        if record is None:
            raise not_found(f"no worker {callback.worker_id} in this pool", "worker_id")
        if record.status is not S.STARTING:
            raise conflict(
                f"worker {record.id} is {record.status}, not starting", "worker_id",
                status=str(record.status),
            )  # fmt: skip
        if callback.model_ref != record.model_ref:
            raise conflict(
                f"worker {record.id} was started with {record.model_ref!r}, "
                f"not {callback.model_ref!r}",
                "model_ref",
                expected=record.model_ref,
            )
        limit = int(record.reserved_bytes * (1 + VRAM_SLACK))
        if callback.vram_bytes > limit:
            raise conflict(
                f"worker {record.id} holds {callback.vram_bytes} bytes, "
                f"{record.reserved_bytes} were admitted",
                "vram_bytes",
                reserved_bytes=record.reserved_bytes,
                reported_bytes=callback.vram_bytes,
            )
        handle = self.handles[record.id]
        record.uri = callback.uri
        record.vram_used = callback.vram_bytes or None
        record.capabilities = callback.capabilities
        record.memory_architecture = callback.memory_architecture
        record.ready_at = utc_now_iso()
        old = record.move(S.READY)
        handle.ready.set()
        self._narrate_status(record, old, human=f"Worker {record.id} is ready at {record.uri}.")
        return record

    # -- watching -------------------------------------------------------------------------------

    async def _watch(self, handle: WorkerHandle) -> None:
        record, config = handle.record, self.config
        with trio.move_on_after(config.ready_timeout_s):
            await handle.ready.wait()
        if not handle.ready.is_set():
            if record.status is S.STARTING:
                self._fail(handle, f"no ready callback within {config.ready_timeout_s} s")
            return

        def on_miss(n: int, problem: str) -> None:
            record.health_misses = n
            self.narrator.emit(
                "health_miss",
                level="warning",
                target=record.id,
                human=f"Worker {record.id} missed health poll {n}/{config.health_misses}: {problem}",
                misses=n,
            )

        def on_failed(reason: str) -> None:
            if record.status in (S.READY, S.DRAINING):
                self._fail(handle, reason)

        await poll_health(
            self.http,
            record.uri,
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
            misses=config.health_misses,
            on_miss=on_miss,
            on_failed=on_failed,
        )

    def _fail(self, handle: WorkerHandle, reason: str) -> None:
        """Status failed now; the process (if any) is ended by the escalation without /shutdown."""
        record = handle.record
        old = record.move(S.FAILED, reason=reason)
        self._narrate_status(
            record, old, level="error", human=f"Worker {record.id} failed: {reason}"
        )
        if handle.nursery is not None and not handle.exited.is_set():
            handle.nursery.start_soon(self._escalate, handle, None)

    def _on_exit(self, handle: WorkerHandle, code: int) -> None:
        record = handle.record
        record.exit_code = code
        record.alive = False
        handle.exited.set()
        if record.status is S.STOPPING:
            how = record.stopped_by or "exit"
            old = record.move(S.STOPPED, reason=f"stopped ({how}), exit code {code}")
            self._narrate_status(record, old, human=f"Worker {record.id} stopped: {record.reason}.")
        elif not record.final:
            old = record.move(S.FAILED, reason=f"the worker exited unexpectedly: {_describe(code)}")
            self._narrate_status(record, old, level="error", human=f"Worker {record.id} failed: "
                                 f"{record.reason}; its memory is free again.")  # fmt: skip
        else:  # failed before, now gone: publish the exit code and the freed memory
            self._narrate_status(record, record.status, human=f"Worker {record.id} has exited "
                                 f"({_describe(code)}); its memory is free again.")  # fmt: skip

    # -- stop and drain -------------------------------------------------------------------------

    def drain(self, worker_id: str) -> WorkerRecord:
        record = self._find(worker_id)
        if record.status is S.DRAINING:
            return record
        if record.status is not S.READY:
            raise conflict(f"worker {worker_id} is {record.status}: only a ready worker drains",
                           "worker_id", status=str(record.status))  # fmt: skip
        old = record.move(S.DRAINING, reason="drained: out of rotation")
        self._narrate_status(record, old, human=f"Worker {worker_id} is draining.")
        return record

    def stop(self, worker_id: str) -> WorkerRecord:
        """Begin stopping (idempotent): drain, then the escalation in the worker's nursery."""
        record = self._find(worker_id)
        handle = self.handles[worker_id]
        if record.final or handle.stop_requested:
            return record
        handle.stop_requested = True
        if record.status is S.READY:
            self.drain(worker_id)
        old = record.move(S.STOPPING, reason="stop requested")
        self._narrate_status(record, old, human=f"Stopping worker {worker_id}.")
        shutdown_url = f"{record.uri}/shutdown" if record.uri else None
        if handle.nursery is not None and not handle.exited.is_set():
            handle.nursery.start_soon(self._escalate, handle, shutdown_url)
        return record

    async def _escalate(self, handle: WorkerHandle, shutdown_url: str | None) -> None:
        record = handle.record

        def on_step(step: str) -> None:
            record.stopped_by = step
            self.narrator.emit(
                "stop_step", target=record.id, human=f"Worker {record.id}: {step}.", step=step
            )

        await stop_process(
            handle.proc,
            handle.exited,
            client=self.http,
            shutdown_url=shutdown_url,
            grace_s=self.config.shutdown_grace_s,
            kill_after_s=self.config.kill_after_s,
            on_step=on_step,
        )

    async def shutdown(self) -> None:
        """Stop every worker (in parallel, each with its escalation) and wait for them to exit."""
        self.shutting_down = True
        self.narrator.emit(
            "pool_shutdown",
            target=self.config.pool_id,
            human=f"Pool {self.config.pool_id} is stopping its {len(self.live())} live worker(s).",
        )
        for record in self.live():
            self.stop(record.id)
        for handle in list(self.handles.values()):
            await handle.exited.wait()
        self.events.close_all()

    def live(self) -> list[WorkerRecord]:
        return [r for r in self.workers.values() if r.alive]

    # -- preload --------------------------------------------------------------------------------

    async def preload(self, model_ref: str):
        self._refuse_when_shutting_down()
        path = await trio.to_thread.run_sync(
            functools.partial(
                resolve_model_ref,
                model_ref,
                hf_cache=self.config.hf_cache,
                hf_download=self.config.hf_download,
            )
        )
        entry, start = self.models.begin(model_ref, path)
        if start:
            self._nursery.start_soon(self.models.read, entry)
        return entry

    # -- helpers --------------------------------------------------------------------------------

    def _find(self, worker_id: str) -> WorkerRecord:
        record = self.workers.get(worker_id)
        if record is None:
            raise not_found(f"no worker {worker_id} in this pool", "worker_id")
        return record

    def _narrate_status(
        self, record: WorkerRecord, old: WorkerStatus | None, *, human: str, level: str = "info"
    ) -> None:
        self.events.publish(
            "worker_status",
            worker_id=record.id,
            status=str(record.status),
            previous=None if old is None else str(old),
            exit_code=record.exit_code,
            reason=record.reason,
            gpu=record.gpu,
        )
        self.narrator.emit(
            "worker_status",
            level=level,
            target=record.id,
            human=human,
            status=str(record.status),
            previous=None if old is None else str(old),
            exit_code=record.exit_code,
        )


def _write_log_line(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # the pool's log closed: never what stops the pool


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
