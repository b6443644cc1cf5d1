"""Does a Prometheus scraper cost decode anything? Decode tokens/s with and without /metrics hammered.

    python bench/bench_metrics_scrape.py [--backend cpu|cuda] [--model PATH] [--tokens 256]
        [--repeats 3] [--scrapers 1] [--json OUT]

One worker process (`python -m worker_orcd`). The same greedy request is streamed `--repeats`
times with nobody scraping and `--repeats` times while `--scrapers` other processes GET
/metrics back to back (no pause: far harder than any real scraper, which polls every few
seconds), interleaved so drift on a shared machine hits both sides alike. Scrapers run in their
own processes so their HTTP client does not share this process's GIL with the stream reader.
Decode tokens/s = (tokens - 1) / (last token - first token) on the client; the worker's own
figure (tokens_out / decode_time_ms of the `end` event) is reported beside it. The issue's
bar: a scrape "costs decode nothing measurable" (the two medians within run-to-run noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import bench_http  # noqa: E402

pct = bench_http._percentile


def scrape_until_stdin_closes(url: str) -> int:
    """Hidden mode (--scrape URL): GET /metrics back to back; latencies (ms) as JSON at the end."""
    import threading

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    latencies = []
    with httpx.Client(timeout=10) as client:
        client.get(f"{url}/metrics")
        print("ready", flush=True)
        while not done.is_set():
            t0 = time.perf_counter()
            response = client.get(f"{url}/metrics")
            latencies.append((time.perf_counter() - t0) * 1e3)
            assert response.status_code == 200
    print(json.dumps(latencies), flush=True)
    return 0


def with_scrapers(url: str, count: int, run):
    """run() while `count` scraper processes hammer /metrics; (its result, scrape latencies)."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--scrape", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    try:
        result = run()
    finally:
        latencies = []
        for proc in procs:
            out, _ = proc.communicate("", timeout=60)  # closes stdin: the scraper stops
            latencies += json.loads(out.strip().splitlines()[-1])
    return result, latencies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scrapers", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scrape", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scrape:
        return scrape_until_stdin_closes(args.scrape)
    harness = bench_http._load_harness()
    extra = ("--model", args.model) if args.model else ()
    quiet, busy, latencies = [], [], []
    with (
        harness.start_worker(
            backend=args.backend, worker_id="bench-scrape", max_context=1024, extra_args=extra
        ) as worker,  # fmt: skip
        httpx.Client() as client,
    ):
        url = worker.base_url

        def stream(job: str) -> dict:
            return bench_http.bench_http_stream(harness, client, url, args.tokens, job)

        stream("warm")
        for r in range(args.repeats):
            quiet.append(stream(f"quiet-{r}"))
            result, lat = with_scrapers(url, args.scrapers, lambda r=r: stream(f"busy-{r}"))
            busy.append(result)
            latencies += lat
        health = worker.health(client)
    q = statistics.median(x["decode_tps"] for x in quiet)
    b = statistics.median(x["decode_tps"] for x in busy)
    res = {
        "backend": health.get("backend"), "model": health.get("model"), "tokens": args.tokens,
        "repeats": args.repeats, "scrapers": args.scrapers,
        "quiet_tps": [x["decode_tps"] for x in quiet], "busy_tps": [x["decode_tps"] for x in busy],
        "quiet_server_tps": statistics.median(x["server_decode_tps"] for x in quiet),
        "busy_server_tps": statistics.median(x["server_decode_tps"] for x in busy),
        "ratio_median": b / q, "scrapes": len(latencies),
        "scrape_p50_ms": pct(latencies, 50), "scrape_p99_ms": pct(latencies, 99),
        "same_text": len({x["text"] for x in quiet + busy}) == 1,
    }  # fmt: skip
    print(f"backend={res['backend']} model={res['model']} tokens={args.tokens} "
          f"repeats={args.repeats} scrapers={args.scrapers}")  # fmt: skip
    print(f"decode tokens/s, nobody scraping:  median {q:8.2f}  runs {res['quiet_tps']}")
    print(f"decode tokens/s, /metrics hammered: median {b:8.2f}  runs {res['busy_tps']}")
    print(f"  with / without: {res['ratio_median']:.1%} (server side "
          f"{res['busy_server_tps']:.2f} vs {res['quiet_server_tps']:.2f})")  # fmt: skip
    print(f"scrapes: {res['scrapes']}, latency p50 {res['scrape_p50_ms']:.2f} ms, "
          f"p99 {res['scrape_p99_ms']:.2f} ms; greedy texts identical: {res['same_text']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
