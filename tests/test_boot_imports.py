"""What `worker-orcd` imports before its `startup` line (load to ready < 2 s is a target).

Run in a fresh interpreter, since this test process has imported everything already. The
packages below are needed only later or only sometimes (a ready callback, a tokenizer.json,
the CUDA engine on the executor thread, the tests): importing them at the boot would put their
import time between the process start and the model load. Also checks the phase arithmetic of
bench/bench_startup.py, which the lead reads the H200 figures with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_startup  # noqa: E402

#: packages the boot must leave for later (top-level names)
DEFERRED = ("httpx", "tokenizers", "huggingface_hub", "openai", "hypothesis", "pycuda", "cuda")


def test_the_boot_imports_none_of_the_deferred_packages():
    code = (
        f"import sys; {bench_startup.BOOT_IMPORTS}; "
        "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert "worker_orcd" in loaded and "trio" in loaded  # the probe did import the boot
    assert loaded.isdisjoint(DEFERRED), sorted(loaded & set(DEFERRED))


def test_phases_are_the_gaps_between_the_first_of_each_startup_event():
    events = [
        {"action": "startup", "ts": "2026-12-02T10:00:01.500Z"},
        {"action": "listening", "ts": "2026-12-02T10:00:01.520Z"},
        {"action": "model_load_start", "ts": "2026-12-02T10:00:01.530Z"},
        {"action": "model_load_progress", "ts": "2026-12-02T10:00:02.000Z"},
        {"action": "model_load_complete", "ts": "2026-12-02T10:00:02.730Z"},
        {"action": "ready", "ts": "2026-12-02T10:00:02.731Z"},
        {"action": "ready", "ts": "2026-12-02T10:00:09.000Z"},  # only the first counts
        {"action": "startup"},  # no timestamp: ignored
    ]
    popen = 1_796_205_600.0  # 2026-12-02T10:00:00Z
    assert bench_startup.phases(events, popen) == {
        "process->startup": 1.5,
        "startup->listening": 0.02,
        "listening->model_load_start": 0.01,
        "model_load_start->model_load_complete": 1.2,
        "model_load_complete->ready": 0.001,
    }


def test_phases_of_a_start_that_never_got_ready():
    events = [{"action": "startup", "ts": "2026-12-02T10:00:00.250Z"}]
    assert bench_startup.phases(events, 1_796_205_600.0) == {"process->startup": 0.25}
    assert bench_startup.phases([], 0.0) == {}
