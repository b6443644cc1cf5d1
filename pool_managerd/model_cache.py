"""The model cache: model files kept hot in RAM (the page cache) for the workers to come.

`preload(model_ref, path)` reads the file once on a worker thread; progress goes out as
`model_preload` events at every 10 % (0 first; 100 once, with the final status) and in `/v2/state` (`models`). A
second preload of a file already loading joins it; of a file already hot, reads it again
(cheap when it is still cached, and it tells the truth if the kernel evicted part of it).
`/v2/state` reports for each file how much of it is resident right now (`mincore`): the page
cache is the kernel's, and memory pressure can evict a preloaded model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import trio

from pool_managerd.events import EventBus
from pool_managerd.page_cache import read_into_cache, resident_bytes
from pool_managerd.state import utc_now_iso
from runtime.narration import Narrator

ACTOR = "model_cache"
MARK_PERCENT = 10


@attrs.define(eq=False)
class CachedModel:
    model_ref: str
    path: Path
    total_bytes: int = 0
    done_bytes: int = 0
    status: str = "loading"  # "loading" | "hot" | "failed"
    requested_at: str = attrs.field(factory=utc_now_iso)
    seconds: float | None = None
    error: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    @property
    def percent(self) -> int:
        return 100 if self.total_bytes == 0 else (100 * self.done_bytes) // self.total_bytes

    def to_json(self, resident: int | None = None) -> dict[str, Any]:
        body = {
            "model_ref": self.model_ref,
            "path": str(self.path),
            "status": self.status,
            "percent": self.percent if self.status != "failed" else None,
            "bytes": self.total_bytes,
            "requested_at": self.requested_at,
            "seconds": self.seconds,
        }
        if resident is not None:
            body["resident_bytes"] = resident
        if self.error is not None:
            body["error"] = self.error
        return body


class ModelCache:
    def __init__(self, events: EventBus, narrator: Narrator):
        self.events = events
        self.narrator = narrator.child(actor=ACTOR)
        self.entries: dict[Path, CachedModel] = {}

    def begin(self, model_ref: str, path: Path) -> tuple[CachedModel, bool]:
        """The entry for `path`, and whether a read must be started for it (not already running)."""
        entry = self.entries.get(path)
        if entry is not None and entry.status == "loading":
            return entry, False
        entry = self.entries[path] = CachedModel(model_ref, path)
        return entry, True

    async def read(self, entry: CachedModel) -> None:
        """Read `entry`'s file into the page cache, publishing progress; never raises OSError."""
        token = trio.lowlevel.current_trio_token()
        last_mark = -MARK_PERCENT

        def progress(done: int, total: int) -> None:  # on the reading thread
            nonlocal last_mark
            entry.total_bytes, entry.done_bytes = total, done
            percent = entry.percent
            # 100 % is published once, with the final status, by `read` itself
            if percent < 100 and percent >= last_mark + MARK_PERCENT:
                last_mark = percent - percent % MARK_PERCENT
                trio.from_thread.run_sync(self._publish, entry, trio_token=token)

        self.narrator.emit(
            "preload_start", target=str(entry.path), human=f"Preloading {entry.path.name}."
        )
        t0 = time.perf_counter()
        try:
            # abandon_on_cancel: a pool stopping mid-read must not wait for the rest of the file
            await trio.to_thread.run_sync(
                read_into_cache, entry.path, progress, abandon_on_cancel=True
            )
        except OSError as error:
            entry.status, entry.error = "failed", f"cannot read {entry.path}: {error.strerror}"
            self.narrator.emit(
                "preload_failed", level="warning", target=str(entry.path), human=entry.error
            )
        else:
            entry.status = "hot"
            entry.seconds = round(time.perf_counter() - t0, 3)
            self.narrator.emit(
                "preload_done",
                target=str(entry.path),
                human=f"{entry.path.name} is in the page cache: "
                f"{entry.total_bytes} bytes in {entry.seconds} s.",
                bytes=entry.total_bytes,
                seconds=entry.seconds,
            )
        finally:
            self._publish(entry)
            entry.done.set()

    def _publish(self, entry: CachedModel) -> None:
        self.events.publish(
            "model_preload",
            model_ref=entry.model_ref,
            path=str(entry.path),
            status=entry.status,
            percent=entry.percent,
            done_bytes=entry.done_bytes,
            total_bytes=entry.total_bytes,
        )

    async def to_json(self) -> list[dict[str, Any]]:
        entries = list(self.entries.values())

        def resident() -> list[int | None]:
            out: list[int | None] = []
            for e in entries:
                try:
                    out.append(resident_bytes(e.path)[0])
                except OSError:
                    out.append(None)
            return out

        counts = await trio.to_thread.run_sync(resident)
        return [e.to_json(r) for e, r in zip(entries, counts, strict=True)]
