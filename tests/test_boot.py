"""The shared process boot (worker_orcd.boot): GC policy, Python's own output narrated, undone."""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
import threading

from runtime.backends import engine_loader
from runtime.config import WorkerConfig
from worker_orcd import boot


def test_start_process_routes_python_output_through_narration_and_finish_undoes_it(capsys):
    hooks = (sys.excepthook, threading.excepthook)
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert gc.isenabled()
    process = boot.start_process(WorkerConfig(worker_id="boot", backend="cpu"))
    try:
        assert not gc.isenabled()  # until the loader has frozen the startup's objects
        assert engine_loader("cuda") is not None  # the entry points register the CUDA engine
        process.narrator.redactor.hold(["a secret the library should not print"])
        logging.getLogger("some.library").warning(
            "odd: %s", "a secret the library should not print"
        )
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()
        lines = capsys.readouterr().err.splitlines()
    finally:
        process.finish()
    events = [json.loads(line) for line in lines]
    warned, crashed = events
    assert warned["action"] == "server_log" and warned["actor"] == "python"
    assert warned["logger"] == "some.library" and warned["redacted"] is True
    assert "secret" not in warned["human"]
    assert crashed["action"] == "uncaught_exception" and "ZeroDivisionError" in crashed["human"]
    assert gc.isenabled()
    assert (sys.excepthook, threading.excepthook) == hooks and root.handlers == handlers


def test_the_text_format_is_one_short_line(capsys):
    process = boot.start_process(WorkerConfig(worker_id="t", backend="cpu", log_format="text"))
    try:
        process.narrator.emit("ready", actor="supervisor", human="Ready:\nline two.")
        (line,) = capsys.readouterr().err.splitlines()
    finally:
        process.finish()
    stamp, rest = line.split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert rest == "INFO    supervisor: Ready:\\nline two."  # newlines escaped: one line
