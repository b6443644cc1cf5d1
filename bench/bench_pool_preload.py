"""Worker time to ready after a preload (model file hot in the page cache) vs cold.

A real pool, real workers. Each round: cold first (the file's pages evicted with
`posix_fadvise(POSIX_FADV_DONTNEED)`, checked with mincore: dropping every cache needs root,
this needs nothing), then hot (`POST /v2/models/preload`, waited until `hot`). Time to ready is
the pool's own figure: admission (`started_at`) to the worker's ready callback (`ready_at`),
so it includes the process start, imports, the model load and the callback.

    python bench/bench_pool_preload.py [--model-ref REF] [--rounds 3] [--backend cpu|cuda]

Numbers are reported, never asserted (decision 0011). The effect grows with the file's size and
the disk's speed: on a host whose "disk" is itself a RAM-backed overlay, cold reads are cheap.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pool_managerd.model_refs import resolve_model_ref  # noqa: E402
from pool_managerd.page_cache import drop_from_cache, resident_bytes  # noqa: E402
from tests.pool.pool_process import start_pool  # noqa: E402


def seconds_to_ready(record: dict) -> float:
    parse = datetime.datetime.fromisoformat
    return (parse(record["ready_at"]) - parse(record["started_at"])).total_seconds()


def one_start(pool, model_ref: str, gpu_id) -> float:
    wid = pool.start_worker(model_ref, gpu_id)["worker_id"]
    record = pool.wait_status(wid, "ready", timeout_s=300)
    pool.post("/v2/workers/stop", {"worker_id": wid})
    pool.wait_status(wid, {"stopped", "failed"}, timeout_s=60)
    return seconds_to_ready(record)


def wait_hot(pool, path: Path, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for model in pool.state()["models"]:
            if model["path"] == str(path) and model["status"] != "loading":
                return model
        time.sleep(0.05)
    raise TimeoutError(f"{path} not preloaded within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-ref", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default=os.environ.get("WORKER_ORCD_TEST_BACKEND", "cpu"))
    args = parser.parse_args()
    os.environ["WORKER_ORCD_TEST_BACKEND"] = args.backend
    gpu_id = 0 if args.backend == "cuda" else "cpu"
    path = resolve_model_ref(args.model_ref)
    size = path.stat().st_size
    cold, hot, preload_s = [], [], []
    with start_pool(pool_id="bench") as pool:
        for _ in range(args.rounds):
            drop_from_cache(path)
            left = resident_bytes(path)[0]
            if left > size // 100:
                print(f"warning: {left} of {size} bytes still cached after DONTNEED", flush=True)
            cold.append(one_start(pool, args.model_ref, gpu_id))
            drop_from_cache(path)
            t0 = time.perf_counter()
            response = pool.post("/v2/models/preload", {"model_ref": args.model_ref})
            assert response.status_code == 202, response.text
            model = wait_hot(pool, path)
            preload_s.append(time.perf_counter() - t0)
            assert model["resident_bytes"] == size, model
            hot.append(one_start(pool, args.model_ref, gpu_id))
    report = {
        "model_ref": args.model_ref,
        "file_bytes": size,
        "backend": args.backend,
        "rounds": args.rounds,
        "cold_ready_s": [round(x, 3) for x in cold],
        "preloaded_ready_s": [round(x, 3) for x in hot],
        "cold_median_s": round(statistics.median(cold), 3),
        "preloaded_median_s": round(statistics.median(hot), 3),
        "preload_median_s": round(statistics.median(preload_s), 3),
        "host": os.uname().nodename,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
