"""Narration: one JSON line per event, the schema of decision 0007, and no user text in logs."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import json
import re
import threading

import pytest

from runtime.narration import CORE_KEYS, Narrator, fingerprint
from runtime.redaction import set_log_hash_key

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def lines_of(buf: io.StringIO) -> list[dict]:
    text = buf.getvalue()
    assert text.endswith("\n")
    raw_lines = text.split("\n")[:-1]
    return [json.loads(line) for line in raw_lines]


def test_one_event_is_one_json_line_with_the_core_keys_in_order():
    buf = io.StringIO()
    before = datetime.datetime.now(datetime.UTC)
    narrator = Narrator("w-1", stream=buf, model="smollm2.gguf")
    narrator.emit(
        "execute_start",
        actor="executor",
        target="job-7",
        human="Starting job job-7.",
        job_id="job-7",
        correlation_id="c-9",
        prompt_tokens=12,
    )
    after = datetime.datetime.now(datetime.UTC)

    (event,) = lines_of(buf)
    assert list(event) == [*CORE_KEYS, "prompt_tokens"]
    assert event["level"] == "info"
    assert event["actor"] == "executor"
    assert event["action"] == "execute_start"
    assert event["target"] == "job-7"
    assert event["human"] == "Starting job job-7."
    assert event["worker_id"] == "w-1"
    assert event["job_id"] == "job-7"
    assert event["correlation_id"] == "c-9"
    assert event["model"] == "smollm2.gguf"
    assert event["prompt_tokens"] == 12
    assert TS_RE.match(event["ts"]), event["ts"]
    ts = datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    # The stamp is UTC "now" (to the millisecond it was truncated to).
    assert before - datetime.timedelta(milliseconds=1) <= ts <= after


def test_optional_keys_are_absent_when_they_do_not_apply():
    buf = io.StringIO()
    Narrator("w-1", stream=buf).emit("startup", actor="supervisor", human="Worker starting.")
    (event,) = lines_of(buf)
    assert set(event) == {"ts", "level", "actor", "action", "target", "human", "worker_id"}
    assert event["target"] == ""


def test_fingerprint_is_a_keyed_sha256_prefix_and_the_length_in_characters():
    text = "Écris un haïku 🌸"
    try:
        set_log_hash_key(b"operator key")
        keyed = hmac.new(b"operator key", text.encode("utf-8"), hashlib.sha256).hexdigest()
        assert fingerprint(text) == {"sha256_prefix": keyed[:12], "length": 16}
        assert fingerprint(text) == fingerprint(text)  # the same text matches within a log
        set_log_hash_key(None)  # the default: a random key per process (REL-6)
        plain = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        assert fingerprint(text)["sha256_prefix"] not in (plain, keyed[:12])
        assert fingerprint("")["sha256_prefix"] != "e3b0c44298fc"  # SHA-256 of nothing
    finally:
        set_log_hash_key(None)


def test_prompt_and_generated_text_never_reach_the_log():
    secret_prompt = "Write a haiku about my password hunter2 and the nonce q7z-31415"
    generated = "hunter2 in the snow / q7z whispers softly / the minute is gone"
    buf = io.StringIO()
    narrator = Narrator("w-1", stream=buf)
    narrator.emit(
        "execute_start",
        actor="executor",
        human="Starting a job.",
        prompt=fingerprint(secret_prompt),
    )
    narrator.emit(
        "execute_end",
        actor="executor",
        human="Job finished.",
        completion=fingerprint(generated),
    )
    log = buf.getvalue()
    for needle in ("hunter2", "q7z", "31415", "haiku", "whispers"):
        assert needle not in log
    start, end = lines_of(buf)
    assert start["prompt"] == fingerprint(secret_prompt)
    assert end["completion"]["length"] == len(generated)


@pytest.mark.parametrize("field", ["prompt", "text", "completion", "messages", "stop"])
def test_raw_text_in_a_text_field_is_refused_and_nothing_is_written(field):
    buf = io.StringIO()
    narrator = Narrator("w-1", stream=buf)
    with pytest.raises(ValueError, match="fingerprint"):
        narrator.emit("execute_start", actor="executor", human="x", **{field: "raw user text"})
    with pytest.raises(ValueError, match="fingerprint"):
        narrator.child(**{field: "raw user text"})
    assert buf.getvalue() == ""


@pytest.mark.parametrize("field", ["ts", "worker_id", "model"])
def test_core_keys_cannot_be_overridden_by_extra_fields(field):
    narrator = Narrator("w-1", stream=io.StringIO())
    with pytest.raises(ValueError, match="reserved"):
        narrator.emit("startup", actor="supervisor", human="x", **{field: "spoof"})


def test_child_binds_defaults_and_event_arguments_win():
    buf = io.StringIO()
    root = Narrator("w-1", stream=buf)
    job = root.child(actor="executor", job_id="j1", correlation_id="c1", model="m.gguf")
    job.emit("execute_start", human="Start.", prompt_tokens=3)
    job.emit("cancel", actor="http", human="Cancel.", job_id="j1", correlation_id="c2")
    root.emit("shutdown", actor="supervisor", human="Bye.")

    start, cancel, shutdown = lines_of(buf)
    assert (start["actor"], start["job_id"], start["correlation_id"]) == ("executor", "j1", "c1")
    assert start["model"] == "m.gguf"
    assert start["prompt_tokens"] == 3
    assert (cancel["actor"], cancel["correlation_id"]) == ("http", "c2")
    # The parent is unchanged by its child's bindings.
    assert "job_id" not in shutdown and "model" not in shutdown


def test_levels_filter_and_unknown_levels_fail():
    buf = io.StringIO()
    narrator = Narrator("w-1", stream=buf, min_level="info")
    narrator.emit("residency_ok", level="debug", actor="residency", human="Fine.")
    narrator.emit("residency_violation", level="error", actor="residency", human="Moved!")
    (event,) = lines_of(buf)
    assert event["level"] == "error"
    assert not narrator.enabled("debug") and narrator.enabled("warning")
    with pytest.raises(ValueError):
        narrator.emit("x", level="fatal", actor="a", human="x")
    with pytest.raises(ValueError):
        Narrator("w", stream=buf, min_level="verbose")


def test_an_event_needs_an_actor():
    with pytest.raises(ValueError, match="actor"):
        Narrator("w-1", stream=io.StringIO()).emit("startup", human="Who said this?")


def test_non_json_values_are_stringified_not_fatal():
    buf = io.StringIO()
    import pathlib

    Narrator("w-1", stream=buf).emit(
        "model_load_start", actor="loader", human="Loading.", path=pathlib.Path("/m/x.gguf")
    )
    (event,) = lines_of(buf)
    assert event["path"] == "/m/x.gguf"


class FlushCountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_every_event_is_flushed():
    stream = FlushCountingStream()
    narrator = Narrator("w-1", stream=stream)
    for i in range(3):
        narrator.emit("model_load_progress", actor="loader", human=f"{i}%", percent=i)
    assert stream.flushes == 3


class SlowStream(io.StringIO):
    """Writes char by char with a thread switch in between, so unlocked writes would interleave."""

    def write(self, s):
        for ch in s:
            super().write(ch)
            threading.Event().wait(0)  # yield the GIL
        return len(s)


def test_concurrent_emits_from_many_threads_never_interleave():
    stream = SlowStream()
    narrator = Narrator("w-1", stream=stream)

    def worker(n: int) -> None:
        job = narrator.child(actor=f"t{n}", job_id=f"job-{n}")
        for i in range(20):
            job.emit("model_load_progress", human=f"thread {n} step {i}", step=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    events = lines_of(stream)
    assert len(events) == 120
    for n in range(6):
        steps = [e["step"] for e in events if e["job_id"] == f"job-{n}"]
        assert steps == list(range(20))


def test_a_closed_stream_does_not_raise():
    buf = io.StringIO()
    narrator = Narrator("w-1", stream=buf)
    buf.close()
    narrator.emit("shutdown", actor="supervisor", human="Bye.")  # must not raise
