"""The M1 performance suite: every milestone-1 exit criterion, measured, in one command.

    python bench/m1_suite.py --backend cuda --model PATH [--out DIR]     (the GPU machine)
    python bench/m1_suite.py --backend cpu                                (anywhere; slow)

Writes DIR/m1-<backend>.json (every figure) and DIR/m1-<backend>.md (the table), and prints
the table. Each criterion is measured on real worker processes (`python -m worker_orcd`) over
HTTP, with the probes of bench_gpu_worker.py (TTFT, /health while another process streams,
cancel) and bench/m1_probes.py (per-token gaps, disconnects, shutdown, leaks):

| criterion | target | how |
|---|---|---|
| load | < 60 s | Popen -> /health "ready" (5 ms polls), 3 starts, the slowest |
| first token p95 | < 100 ms | 32-token prompt, max_tokens 1: request sent -> token event |
| per-token p95 | < 50 ms | gaps between token arrivals of greedy streams (and the worker's ITL histogram) |
| /health p99 | < 10 ms | GET every 2 ms while another process streams |
| graceful shutdown | < 5 s | POST /shutdown while a short job streams -> exit 0 (and idle) |
| cancel | < 100 ms | POST /cancel after the 8th token -> the `error` CANCELLED event |
| disconnect abort | < 100 ms | socket closed after the 8th token / right after `started` of a long prompt -> `execute_end` |
| no leaks | VRAM +0, RSS within 16 MiB | after 100 mixed requests (normal, cancelled, disconnected) |

Numbers are reported against their targets (PASS/MISS), never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import types
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import bench_gpu_worker as gw  # noqa: E402
import bench_http  # noqa: E402
import m1_probes as probes  # noqa: E402

RSS_SLACK = 16 * 2**20
DEFAULTS = {  # (cuda, cpu): the cpu numbers keep a run on 2 cores within minutes
    "ttft_requests": (60, 15),
    "cancel_samples": (40, 10),
    "disconnect_samples": (20, 8),
    "itl_runs": (5, 2),
    "itl_tokens": (256, 48),
    "leak_tokens": (64, 6),
    "long_prompt": (1500, 900),  # + the probe's max_tokens 512 within the 2,048-token context
    "health_load_tokens": (256, 24),  # the jobs another process streams while /health is probed
}


def measure(args) -> dict:
    from runtime.gguf_file import open_gguf
    from runtime.tokenizer import Tokenizer

    harness = bench_http._load_harness()
    with open_gguf(args.model) as gguf:
        tokenizer = Tokenizer.from_metadata(gguf.metadata)  # for prompts of a given length
    res: dict = {"backend": args.backend, "model": args.model.name, "device": device(args.backend),
                 "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}  # fmt: skip
    loads = []
    worker, seconds, wall = gw.launch(harness, args, "m1-1")
    loads.append(seconds)
    res["load_phases"] = gw.load_phases(worker, wall)
    try:
        url = worker.base_url
        with httpx.Client(timeout=120) as client:
            prompt32 = gw.prompt_of(tokenizer, 32)
            res["ttft"] = gw.ttft(harness, client, url, prompt32, args.ttft_requests)
            res["per_token"] = probes.per_token(
                harness, client, url, args.itl_tokens, args.itl_runs
            )
            res["health_idle"] = gw.health_latency(url, 1.0, 0.002, None)
            res["health_busy"] = gw.health_latency(
                url, args.health_seconds, 0.002, args.health_load_tokens
            )
            res["cancel"] = gw.cancel_latency(harness, url, args.cancel_samples)
            mid = probes.disconnect_abort(worker, client, url, bench_http.PROMPT,
                                          b"event: token", 8, args.disconnect_samples)  # fmt: skip
            long_prompt = gw.prompt_of(tokenizer, args.long_prompt)
            prefill = probes.disconnect_abort(worker, client, url, long_prompt,
                                              b"event: started", 1, args.disconnect_samples)  # fmt: skip
            res["disconnect_decode"], res["disconnect_prefill"] = mid, prefill
            res["leaks"] = probes.leak_check(harness, worker, client, url, 100, args.leak_tokens)
        res["shutdown_busy"] = probes.shutdown_time(worker, url, 32)
    finally:
        worker.stop()
    for k in (2, 3):
        worker, seconds, _ = gw.launch(harness, args, f"m1-{k}")
        loads.append(seconds)
        if k == 3:
            res["shutdown_idle"] = probes.shutdown_time(worker, worker.base_url, None)
        worker.stop()
    res["load_to_ready_s"] = loads
    return res


def device(backend: str) -> str:
    if backend == "cuda":
        return gw.device_name(backend)
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    model = names[0] if names else "cpu"
    return f"cpu ({model}, {os.cpu_count()} cores)"


def rows(res: dict) -> list[tuple[str, str, str, bool | None, str]]:
    """(criterion, target, measured, passed, how) for the table."""
    t, it, hb, c = res["ttft"], res["per_token"], res["health_busy"], res["cancel"]
    dd, dp, lk = res["disconnect_decode"], res["disconnect_prefill"], res["leaks"]
    sb, si = res["shutdown_busy"], res["shutdown_idle"]
    vram = lk["vram_delta"]
    bucket = it["server_p95_bucket_s"]
    server = "> 1 s" if bucket is None else f"<= {bucket * 1e3:g} ms"
    graceful = sb["exit_code"] == 0 and sb["stream_ended_with"] == "end" and sb["engine_closed"]
    return [
        (
            "load to ready",
            "< 60 s",
            f"{max(res['load_to_ready_s']):.2f} s (starts: "
            + ", ".join(f"{s:.2f}" for s in res["load_to_ready_s"])
            + ")",
            max(res["load_to_ready_s"]) < 60,
            "Popen -> /health ready",
        ),
        (
            "first token p95",
            "< 100 ms",
            f"{t['p95_ms']:.2f} ms (p50 {t['p50_ms']:.2f}, n={t['n']})",
            t["p95_ms"] < 100,
            f"{t['prompt_tokens']}-token prompt, max_tokens 1",
        ),
        (
            "per-token p95",
            "< 50 ms",
            f"{it['p95_ms']:.2f} ms (p50 {it['p50_ms']:.2f}, max "
            f"{it['max_ms']:.2f}; worker histogram p95 {server})",
            it["p95_ms"] < 50,
            f"client arrival gaps, n={it['n']}",
        ),
        (
            "/health p99 while streaming",
            "< 10 ms",
            f"{hb['p99_ms']:.2f} ms (idle {res['health_idle']['p99_ms']:.2f})",
            hb["p99_ms"] < 10,
            f"n={hb['n']}",
        ),
        (
            "graceful shutdown",
            "< 5 s",
            f"{sb['seconds']:.2f} s with a job streaming (idle "
            f"{si['seconds']:.2f} s), exit {sb['exit_code']}, job {sb['stream_ended_with']}",
            sb["seconds"] < 5 and graceful and si["exit_code"] == 0,
            "POST /shutdown -> exit",
        ),
        (
            "cancel",
            "< 100 ms",
            f"p99 {c['p99_ms']:.2f} ms (max {c['max_ms']:.2f})",
            c["max_ms"] < 100,
            f"n={c['n']}, /cancel -> error event",
        ),
        (
            "disconnect abort, mid-decode",
            "< 100 ms",
            f"p99 {dd['p99_ms']:.2f} ms (max {dd['max_ms']:.2f})",
            dd["max_ms"] < 100,
            f"n={dd['n']}, close -> execute_end",
        ),
        (
            "disconnect abort, long prefill",
            "< 100 ms",
            f"p99 {dp['p99_ms']:.2f} ms (max "
            f"{dp['max_ms']:.2f}; tokens generated <= {dp['tokens_generated_max']:g})",
            dp["max_ms"] < 100,
            f"n={dp['n']}, closed right after `started`",
        ),
        (
            "no leaks (100 mixed requests)",
            "VRAM +0 B, RSS < +16 MiB",
            f"RSS {lk['rss_delta'] / 2**20:+.1f} MiB, VRAM "
            + ("n/a (cpu)" if vram is None else f"{vram / 2**20:+.1f} MiB"),
            lk["rss_delta"] <= RSS_SLACK and (vram is None or vram == 0),
            "normal / cancelled / disconnected, in turn",
        ),
    ]


def markdown(res: dict) -> str:
    lines = [f"M1 suite: backend {res['backend']}, {res['device']}, model {res['model']}, "
             f"{res['date']}",
             "", "| criterion | target | measured | result | how |", "|---|---|---|---|---|"]  # fmt: skip
    for name, target, measured, ok, how in rows(res):
        lines.append(f"| {name} | {target} | {measured} | {'PASS' if ok else 'MISS'} | {how} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--model", type=Path, help="GGUF file (default: the embedded model)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-results"))
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--health-seconds", type=float, default=4.0)
    for name, (gpu, cpu) in DEFAULTS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                        help=f"default {gpu} (cuda), {cpu} (cpu)")  # fmt: skip
    args = ap.parse_args(argv)
    for name, (gpu, cpu) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if args.backend == "cuda" else cpu)
    args.model = args.model or bench_http._default_model()
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_dir = str(args.out)
    res = measure(types.SimpleNamespace(**vars(args)))
    table = markdown(res)
    res["table"] = [list(map(str, row)) for row in rows(res)]
    (args.out / f"m1-{args.backend}.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / f"m1-{args.backend}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
