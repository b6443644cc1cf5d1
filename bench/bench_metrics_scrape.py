"""Does a Prometheus scraper cost decode anything? Decode tokens/s with and without /metrics hammered.

    python bench/bench_metrics_scrape.py [--backend cpu|cuda] [--model PATH] [--tokens 256]
        [--repeats 3] [--scrapers 1] [--intervals-ms 0,100] [--json OUT]

One worker process (`python -m worker_orcd`). The same greedy request is streamed `--repeats`
times with nobody scraping and, for each of `--intervals-ms`, `--repeats` times while
`--scrapers` other processes GET /metrics with that pause between scrapes (0: back to back,
far harder than any real scraper, which polls every few seconds; 100: ten a second, still 150
times Prometheus's default), interleaved so drift on a shared machine hits every mode alike. Scrapers run in their
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


def scrape_until_stdin_closes(url: str, pause_s: float) -> int:
    """Hidden mode (--scrape URL PAUSE_S): GET /metrics, pausing PAUSE_S between scrapes, until
    stdin closes; the latencies (ms) as JSON at the end."""
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
            if pause_s:
                done.wait(pause_s)
    print(json.dumps(latencies), flush=True)
    return 0


def with_scrapers(url: str, count: int, pause_s: float, run):
    """run() while `count` scraper processes scrape /metrics; (its result, scrape latencies)."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--scrape", url, str(pause_s)],
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
    ap.add_argument("--intervals-ms", default="0,100", help="pauses between scrapes, per mode")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scrape", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scrape:
        return scrape_until_stdin_closes(args.scrape[0], float(args.scrape[1]))
    harness = bench_http._load_harness()
    extra = ("--model", args.model) if args.model else ()
    pauses = [float(ms) / 1e3 for ms in args.intervals_ms.split(",")]
    runs: dict = {"quiet": [], **{p: [] for p in pauses}}
    latencies: dict = {p: [] for p in pauses}
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
            runs["quiet"].append(stream(f"quiet-{r}"))
            for p in pauses:
                result, lat = with_scrapers(url, args.scrapers, p, lambda r=r: stream(f"s-{r}"))
                runs[p].append(result)
                latencies[p] += lat
        health = worker.health(client)
    quiet = statistics.median(x["decode_tps"] for x in runs["quiet"])
    res = {"backend": health.get("backend"), "model": health.get("model"), "tokens": args.tokens,
           "repeats": args.repeats, "scrapers": args.scrapers, "modes": []}  # fmt: skip
    print(f"backend={res['backend']} model={res['model']} tokens={args.tokens} "
          f"repeats={args.repeats} scrapers={args.scrapers}")  # fmt: skip
    print(f"{'mode':<26}{'median t/s':>11}{'vs quiet':>9}{'server t/s':>11}{'scrapes/s':>10}"
          f"{'scrape p50':>11}{'p99 ms':>8}  runs")  # fmt: skip
    for mode in ("quiet", *pauses):
        tps = [x["decode_tps"] for x in runs[mode]]
        seconds = sum(x["tokens"] / x["decode_tps"] for x in runs[mode])
        lat = latencies.get(mode, [])
        row = {"mode": "nobody scraping" if mode == "quiet" else f"scraping every {mode * 1e3:g} ms",
               "median_tps": statistics.median(tps), "runs_tps": tps,
               "server_tps": statistics.median(x["server_decode_tps"] for x in runs[mode]),
               "scrapes_per_s": len(lat) / seconds if lat else 0.0,
               "scrape_p50_ms": pct(lat, 50) if lat else None,
               "scrape_p99_ms": pct(lat, 99) if lat else None}  # fmt: skip
        row["ratio"] = row["median_tps"] / quiet
        res["modes"].append(row)
        p50 = f"{row['scrape_p50_ms']:.2f}" if lat else "-"
        p99 = f"{row['scrape_p99_ms']:.2f}" if lat else "-"
        print(f"{row['mode']:<26}{row['median_tps']:>11.2f}{row['ratio']:>9.1%}"
              f"{row['server_tps']:>11.2f}{row['scrapes_per_s']:>10.1f}{p50:>11}{p99:>8}  "
              + ", ".join(f"{t:.1f}" for t in tps))  # fmt: skip
    texts = {x["text"] for mode_runs in runs.values() for x in mode_runs}
    res["same_text"] = len(texts) == 1
    print(f"greedy texts identical in every mode: {res['same_text']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
