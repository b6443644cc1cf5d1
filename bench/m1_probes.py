"""The M1 suite's own probes (bench/m1_suite.py): what bench_gpu_worker.py does not measure yet.

Per-token latency (client arrival gaps and the worker's inter-token histogram), client
disconnects (mid-decode and during a long prefill: socket closed -> the job's `execute_end`
narration), graceful shutdown (POST /shutdown -> process exit), and leaks (host RSS and VRAM
of the worker process before and after mixed requests). Each returns a dict of figures;
targets are applied by the suite.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import threading
import time

import bench_http
import httpx

pct = bench_http._percentile


# ----------------------------------------------------------------------------- memory


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def vram_bytes(pid: int) -> int | None:
    """Device memory the process holds (NVML through nvidia-ml-py, else nvidia-smi); None if
    neither is there (a machine without a GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid:
                        return int(proc.usedGpuMemory)
            return 0
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        pass
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1]) * 2**20
    return 0


# ----------------------------------------------------------------------------- metrics


def metrics(client: httpx.Client, url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(client.get(f"{url}/metrics").text):
        for s in family.samples:
            extra = ",".join(
                f"{k}={v}" for k, v in sorted(s.labels.items()) if k in ("le", "outcome")
            )
            out[f"{s.name}{{{extra}}}" if extra else s.name] = s.value
    return out


def histogram_quantile(before: dict, after: dict, name: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of the observations between two scrapes
    (None: beyond the last finite bucket, or nothing observed)."""
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}")), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(f"{name}_bucket{{")
    )
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound if bound != float("inf") else None
    return None


def wait_idle(client: httpx.Client, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = metrics(client, url)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0:
            return
        time.sleep(0.01)
    raise TimeoutError("the worker did not go idle")


# ----------------------------------------------------------------------------- per token


def per_token(harness, client: httpx.Client, url: str, tokens: int, runs: int) -> dict:
    gaps: list[float] = []
    before = metrics(client, url)
    for r in range(runs):
        body = {"job_id": f"itl-{r}", "prompt": bench_http.PROMPT, "max_tokens": tokens,
                "temperature": 0.0}  # fmt: skip
        tr = harness.stream_execute(client, url, body, timeout_s=600)
        times = [t for (name, _), t in zip(tr.events, tr.arrivals, strict=True) if name == "token"]
        gaps += [(b - a) * 1e3 for a, b in zip(times, times[1:], strict=False)]
    after = metrics(client, url)
    itl = "worker_inter_token_latency_seconds"
    return {"n": len(gaps), "p50_ms": pct(gaps, 50), "p95_ms": pct(gaps, 95), "max_ms": max(gaps),
            "server_p95_bucket_s": histogram_quantile(before, after, itl, 0.95)}  # fmt: skip


# ----------------------------------------------------------------------------- disconnects


def _ts(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def _end_of(worker, job_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in worker.narration():
            if event.get("action") == "execute_end" and event.get("job_id") == job_id:
                return event
        time.sleep(0.005)
    raise TimeoutError(f"no execute_end for {job_id}")


def hang_up_after(url: str, body: dict, marker: bytes, count: int) -> float:
    """POST /execute on a raw socket, read until `marker` was seen `count` times, close;
    returns time.time() of the close."""
    import json

    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = (f"POST /execute HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
    sock = socket.create_connection((host, int(port)), timeout=120)
    try:
        sock.sendall(head + payload)
        seen = b""
        while seen.count(marker) < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"stream ended before {count} x {marker!r}: {seen[-300:]!r}")
            seen += chunk
            if seen.startswith(b"HTTP/1.1 ") and not seen.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the worker refused the probe's job: {seen[:300]!r}")
    finally:
        closed = time.time()
        sock.close()
    return closed


def disconnect_abort(
    worker, client, url: str, prompt: str, marker: bytes, count: int, n: int
) -> dict:
    """Socket closed -> `execute_end` (CANCELLED) narrated: how long the engine went on."""
    lat, generated = [], []
    for r in range(n + 1):
        job = f"disc-{marker.decode().split()[-1]}-{r}-{time.monotonic_ns()}"
        before = metrics(client, url)["worker_tokens_generated_total"]
        closed = hang_up_after(url, {"job_id": job, "prompt": prompt, "max_tokens": 512,
                                     "temperature": 0.0}, marker, count)  # fmt: skip
        end = _end_of(worker, job)
        assert end.get("code") == "CANCELLED", end
        wait_idle(client, url)
        if r >= 1:  # one warm-up
            lat.append((_ts(end) - closed) * 1e3)
            generated.append(metrics(client, url)["worker_tokens_generated_total"] - before)
    return {"n": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
            "tokens_generated_max": max(generated)}  # fmt: skip


# ----------------------------------------------------------------------------- shutdown


def shutdown_time(worker, url: str, stream_tokens: int | None) -> dict:
    """POST /shutdown (optionally while a job streams) -> the process exits; its status."""
    result: dict = {}
    reader = None
    if stream_tokens:
        harness = bench_http._load_harness()

        def stream() -> None:
            with httpx.Client() as client:
                body = {"job_id": "sd", "prompt": bench_http.PROMPT, "max_tokens": stream_tokens,
                        "temperature": 0.0}  # fmt: skip
                result["t"] = harness.stream_execute(client, url, body, timeout_s=600)

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        while "execute_start" not in [e.get("action") for e in worker.narration()]:
            time.sleep(0.002)
    t0 = time.perf_counter()
    status = httpx.post(f"{url}/shutdown", timeout=10).status_code
    rc = worker.proc.wait(timeout=120)
    seconds = time.perf_counter() - t0
    if reader is not None:
        reader.join(timeout=30)
    terminal = result["t"].terminal[0] if "t" in result else None
    return {"seconds": seconds, "status": status, "exit_code": rc, "stream_ended_with": terminal,
            "engine_closed": "engine_closed" in [e.get("action") for e in worker.narration()]}  # fmt: skip


# ----------------------------------------------------------------------------- leaks


def leak_check(harness, worker, client: httpx.Client, url: str, n: int, tokens: int) -> dict:
    """RSS and VRAM of the worker after `n` mixed requests (normal, cancelled, disconnected)
    against their level after a warm-up of each kind."""
    pid = worker.proc.pid

    def one(i: int) -> None:
        job = f"mix-{i}-{time.monotonic_ns()}"
        body = {"job_id": job, "prompt": bench_http.PROMPT, "max_tokens": tokens, "temperature": 0.7,
                "seed": i}  # fmt: skip
        kind = i % 3
        if kind == 0:
            harness.stream_execute(client, url, body, timeout_s=600)
        elif kind == 1:
            with client.stream("POST", f"{url}/execute", json={**body, "max_tokens": 1024}) as r:
                asked = False
                for line in r.iter_lines():
                    if line.startswith("event: token") and not asked:
                        asked = client.post(f"{url}/cancel", json={"job_id": job}).is_success
        else:
            hang_up_after(url, {**body, "max_tokens": 1024}, b"event: token", 2)
        wait_idle(client, url)

    for i in range(6):
        one(i)
    time.sleep(0.5)
    base_rss, base_vram = rss_bytes(pid), vram_bytes(pid)
    for i in range(n):
        one(100 + i)
    time.sleep(0.5)
    rss, vram = rss_bytes(pid), vram_bytes(pid)
    return {"n": n, "rss_baseline": base_rss, "rss_after": rss, "rss_delta": rss - base_rss,
            "vram_baseline": base_vram, "vram_after": vram,
            "vram_delta": None if vram is None else vram - base_vram}  # fmt: skip
