"""Narration: one JSON object per line on stderr, a story of what the worker does.

Every event names who acted (`actor`), what it did (`action`), to what (`target`) and says it in
one short sentence (`human`), so that a person tailing stderr and a log pipeline parsing it read
the same line. The schema and its rules are in specs/decisions/0007-narration.md.

The one rule that is never bent: **prompts and generated text are never logged.** Callers pass
`fingerprint(text)` (a SHA-256 prefix and the length) instead; fields whose names say they hold
text (`prompt`, `text`, `completion`, ...) are rejected unless they hold a fingerprint, so a slip
fails loudly in tests instead of leaking user data into logs.

Behind that rule stands a second one (W-1902): every string of every event passes the sink's
`runtime.redaction.Redactor` before it is written, so client text that reaches a log line by
accident (an exception message quoting its input, a crash report) is replaced by its hash and
length. `--log-prompts` turns both off for debugging: the prompt and output are then logged in
`unredacted_*` fields, and every line that carries client text says so (`client_text`).

Two formats (`--log-format`): `json` (the default, for machines) and `text`, one short line per
event for people: time, level, actor, the human sentence.

`Narrator.emit` is safe from any thread (the executor's GPU thread narrates too): one lock
serialises writes, and each event is a single `write` of a whole line followed by `flush`.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from typing import Any, TextIO

from runtime.redaction import Redactor, text_digest

#: Levels in increasing severity; events below a narrator's `min_level` are dropped.
LEVELS = ("debug", "info", "warning", "error")

#: Keys the narrator writes itself, in this order; extra fields may not reuse them.
CORE_KEYS = (
    "ts",
    "level",
    "actor",
    "action",
    "target",
    "human",
    "worker_id",
    "job_id",
    "correlation_id",
    "model",
)

#: Core keys a `child` may bind as defaults (the rest are per-event or fixed).
BINDABLE_KEYS = ("actor", "job_id", "correlation_id")

#: Field names that, by their meaning, would carry user text. They must hold a fingerprint.
TEXT_FIELDS = frozenset(
    {
        "prompt",
        "messages",
        "text",
        "completion",
        "generated",
        "generated_text",
        "output",
        "output_text",
        "content",
        "token_text",
        "stop",
    }
)

#: Output formats of a sink (`--log-format`).
FORMATS = ("json", "text")
#: What a line carrying client text says about it (with --log-prompts only).
CLIENT_TEXT_NOTE = "logged because --log-prompts is on"
#: Prefix of the only fields that may hold raw client text, accepted with --log-prompts only.
UNREDACTED_PREFIX = "unredacted_"

#: Characters of the hex SHA-256 digest kept by `fingerprint`: enough to tell prompts apart in
#: a log, too few to be a useful dictionary-attack oracle for anything but very short texts.
FINGERPRINT_HEX_CHARS = 12


def fingerprint(text: str) -> dict[str, Any]:
    """What stands in for a prompt or generated text in a log: a hash prefix and the length.

    The hash is HMAC-SHA-256 under the process's log hash key (`runtime.redaction`), so a
    short prompt cannot be recovered by hashing candidates.

    The length is in characters (what a person reading `len(prompt)` would expect).
    """
    return {"sha256_prefix": text_digest(text)[:FINGERPRINT_HEX_CHARS], "length": len(text)}


def _is_fingerprint(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"sha256_prefix", "length"}
        and isinstance(value["sha256_prefix"], str)
        and isinstance(value["length"], int)
    )


def _utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. 2026-11-26T15:32:30.123Z."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Sink:
    """The shared output of a narrator and all its children: one stream, one lock, one format."""

    def __init__(self, stream: TextIO, min_level: str, fmt: str, redactor: Redactor | None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; use one of {FORMATS}")
        self.stream = stream
        self.min_rank = LEVELS.index(min_level)
        self.fmt = fmt
        self.redactor = redactor or Redactor()
        self.lock = threading.Lock()

    def write_event(self, event: dict[str, Any]) -> None:
        if self.fmt == "text":
            human = event["human"].replace("\r", "\\r").replace("\n", "\\n")
            line = f"{event['ts']} {event['level'].upper():<7} {event['actor']}: {human}"
        else:
            # default=str: a Path or an enum in a field must not turn an event into a crash;
            # ensure_ascii keeps every line 7-bit clean whatever a file name contains.
            line = json.dumps(event, default=str, ensure_ascii=True, separators=(",", ":"))
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                # stderr closed or a broken pipe: logging must never be what kills the worker.
                pass

    def redact(self, value: Any) -> tuple[Any, bool]:
        """`value` with registered client text scrubbed from every string in it; found any?"""
        if isinstance(value, str):
            return self.redactor.scrub(value)
        if isinstance(value, dict):
            found = False
            out = {}
            for key, item in value.items():
                out[key], hit = self.redact(item)
                found |= hit
            return out, found
        if isinstance(value, list | tuple):
            pairs = [self.redact(item) for item in value]
            return [v for v, _ in pairs], any(hit for _, hit in pairs)
        if value is None or isinstance(value, bool | int | float):
            return value, False
        return self.redactor.scrub(str(value))  # a Path, an enum, an exception: as JSON writes it


class Narrator:
    """Writes narration events; `child(...)` binds defaults such as job_id for one job.

    `worker_id` is on every event; `model` (when known) too. `min_level` drops chatty events
    (e.g. "debug") without touching call sites; `fmt` is "json" or "text"; `redactor` is where
    client texts are registered (a fresh one by default; `mark_only` means --log-prompts).
    """

    def __init__(
        self,
        worker_id: str,
        stream: TextIO | None = None,
        model: str | None = None,
        *,
        min_level: str = "info",
        fmt: str = "json",
        redactor: Redactor | None = None,
        _sink: _Sink | None = None,
        _defaults: dict[str, Any] | None = None,
    ):
        if min_level not in LEVELS:
            raise ValueError(f"unknown narration level {min_level!r}; use one of {LEVELS}")
        self.worker_id = worker_id
        self.model = model
        # stream=None means "stderr at the time of the call", which pytest's capsys can swap.
        self._sink = _sink or _Sink(
            stream if stream is not None else sys.stderr, min_level, fmt, redactor
        )
        self._defaults = dict(_defaults or {})

    def child(self, **defaults: Any) -> Narrator:
        """A narrator sharing this one's stream and lock, with extra default fields.

        `child(job_id=..., correlation_id=...)` for one job, `child(actor="executor")` for one
        actor, `child(model=...)` once the model is known. `emit` arguments override these.
        """
        model = defaults.pop("model", self.model)
        _check_fields(defaults, bindable=True)
        return Narrator(
            self.worker_id,
            model=model,
            _sink=self._sink,
            _defaults={**self._defaults, **defaults},
        )

    @property
    def redactor(self) -> Redactor:
        return self._sink.redactor

    @property
    def log_prompts(self) -> bool:
        return self._sink.redactor.mark_only

    def enabled(self, level: str) -> bool:
        """Whether an event of `level` would be written (skip building costly fields if not)."""
        return LEVELS.index(level) >= self._sink.min_rank

    def emit(
        self,
        action: str,
        *,
        level: str = "info",
        actor: str | None = None,
        target: str = "",
        human: str,
        job_id: str | None = None,
        correlation_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Write one event as one JSON line. Never pass raw prompt/generated text: fingerprint it.

        `actor` is required (it may come from `child(actor=...)`); `job_id`, `correlation_id`
        and `model` appear only when set. Extra `fields` follow the core keys.
        """
        if level not in LEVELS:
            raise ValueError(f"unknown narration level {level!r}; use one of {LEVELS}")
        _check_fields(fields, bindable=False, log_prompts=self.log_prompts)
        extra = {**self._defaults, **fields}
        actor = actor if actor is not None else extra.get("actor")
        job_id = job_id if job_id is not None else extra.get("job_id")
        if correlation_id is None:
            correlation_id = extra.get("correlation_id")
        for key in BINDABLE_KEYS:
            extra.pop(key, None)
        if not actor:
            raise ValueError(f"narration event {action!r} needs an actor")
        if not self.enabled(level):
            return

        event: dict[str, Any] = {
            "ts": _utc_now_iso(),
            "level": level,
            "actor": actor,
            "action": action,
            "target": target,
            "human": human,
            "worker_id": self.worker_id,
        }
        if job_id is not None:
            event["job_id"] = job_id
        if correlation_id is not None:
            event["correlation_id"] = correlation_id
        if self.model is not None:
            event["model"] = self.model
        event.update(extra)
        event, found = self._sink.redact(event)
        if self.log_prompts and (found or any(k.startswith(UNREDACTED_PREFIX) for k in extra)):
            event["client_text"] = CLIENT_TEXT_NOTE
            event["human"] = f"[--log-prompts] {event['human']}"
        elif found:
            event["redacted"] = True
        self._sink.write_event(event)


def _check_fields(fields: dict[str, Any], *, bindable: bool, log_prompts: bool = False) -> None:
    """Reject core keys used as extras and text-bearing fields that are not fingerprints."""
    for key, value in fields.items():
        if key.startswith(UNREDACTED_PREFIX) and not log_prompts:
            raise ValueError(
                f"narration field {key!r} carries client text: only with --log-prompts"
            )
        if key in CORE_KEYS and not (bindable and key in BINDABLE_KEYS):
            raise ValueError(f"narration field {key!r} is reserved")
        if key in TEXT_FIELDS and not _is_fingerprint(value):
            raise ValueError(
                f"narration field {key!r} would log user text; pass fingerprint(text) instead"
            )
