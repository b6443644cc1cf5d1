"""GPU worker benchmark (issues 5 and 3): engine, llama.cpp and HTTP figures in one run.

    python3 bench/bench_gpu_worker.py --model PATH [--backend cuda] [--llama-cpp DIR]
        [--json OUT.json]

1. Engine alone, in this process: decode tokens/s for 128 and 512 generated tokens (sample on
   the device + step, from a 1-token prompt, like llama-bench's tg), prefill tokens/s for a
   512-token prompt from an empty cache (pp512); median of --reps after a warm-up.
2. With --llama-cpp: llama-bench (tg128, tg512, pp512, -fa 1, -ngl 99) on the same file, on the
   same card, in the same run, and the ratios. DIR is a build (`bench/llama_cpp.py build`) or
   the packed source (`tools/pack_llama_cpp.sh`), built first into /tmp/llama-cpp-build.
3. A real worker subprocess (`python -m worker_orcd`): load time to ready (process start ->
   /health "ready", polled every 5 ms), TTFT for a 32-token prompt (max_tokens 1; request sent ->
   first token event parsed), decode tokens/s through HTTP/SSE vs the engine alone (same prompt,
   greedy, interleaved repeats; bench_http.py's code), /health latency idle and while another
   process streams, cancel -> terminal `error` CANCELLED latency (POST /cancel sent after the
   8th token -> the error event parsed on the stream).
4. Two more worker starts with a warm kernel cache (cuda/kernel_cache.py): load time to ready, both reported.

Client-side work that could distort a latency (SSE parsing at 1000+ events/s) runs in another
process, never in a thread beside the probe: two threads of this process would share the GIL.
Targets are printed next to each figure (PASS/MISS), never asserted. The roofline assumes every
weight byte is read once per token at --peak-gbps (H100 SXM: 3350 GB/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import bench_http  # noqa: E402  (PROMPT, EngineAlone, bench_http_stream, HealthSampler, ...)
import bench_startup  # noqa: E402
import llama_cpp  # noqa: E402
from bench_cuda import median_time  # noqa: E402

from runtime.sampling import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, seed=1)
pct = bench_http._percentile


def _sync(engine) -> None:
    stream = getattr(engine, "stream", None)  # the CUDA engine's; numpy is synchronous
    if stream is not None:
        stream.synchronize()


def engine_figures(engine, decode_ns: list[int], prefill_n: int, reps: int) -> dict:
    def decode(n):
        engine.release(0)
        engine.prefill(0, [1])
        for i in range(n):
            engine.decode([0], engine.sample([0], [GREEDY], [()], [i]))
        _sync(engine)

    ids = [(7 * i + 3) % engine.config.vocab_size for i in range(prefill_n)]

    def prefill():
        engine.release(0)
        engine.prefill(0, ids)
        _sync(engine)

    out = {f"tg{n}": n / median_time(lambda n=n: decode(n), reps) for n in decode_ns}
    out[f"pp{prefill_n}"] = prefill_n / median_time(prefill, reps)
    return out


# ----------------------------------------------------------------------------- worker and probes


def launch(harness, args, worker_id: str, extra: tuple[str, ...] = ()):
    """Start a worker; (WorkerProcess, seconds from Popen to /health "ready", Popen's time())."""
    port = harness.free_port()
    log = Path(args.log_dir) / f"worker-{worker_id}.log"
    cmd = [sys.executable, "-m", "worker_orcd", "--port", str(port), "--backend", args.backend,
           "--worker-id", worker_id, "--model", str(args.model),
           "--max-context", str(args.max_context), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0, wall0 = time.perf_counter(), time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=BENCH.parent, env=env, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=f)  # fmt: skip
    worker = harness.WorkerProcess(proc, f"http://127.0.0.1:{port}", log, args.backend)
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() - t0 < 300:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if client.get(f"{worker.base_url}/health").json().get("status") == "ready":
                    return worker, time.perf_counter() - t0, wall0
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.005)
    worker.stop()
    raise TimeoutError("worker not ready in 300 s")


def load_phases(worker, popen_wall: float) -> dict:
    """Narration timestamps: process -> startup -> listening -> model_load_start ->
    model_load_complete -> ready (s); bench_startup.py has the import part too."""
    return bench_startup.phases(worker.narration(), popen_wall)


def prompt_of(tokenizer, n: int) -> str:
    """A text that encodes to exactly n tokens (numbers, so greedy decoding keeps going)."""
    ids = tokenizer.encode(" ".join(str(i) for i in range(4 * n)) + ",", parse_special=True)
    for k in range(n, n + 8):
        text = tokenizer.decode(ids[:k])
        if len(tokenizer.encode(text, parse_special=True)) == n:
            return text
    raise RuntimeError(f"no {n}-token prompt found")


def ttft(harness, client, url: str, prompt: str, n: int) -> dict:
    firsts, totals, prompt_tokens = [], [], None
    for r in range(n + 3):
        body = {"job_id": f"ttft-{r}", "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        tr = harness.stream_execute(client, url, body, timeout_s=60)
        harness.check_stream(tr.events)
        if r >= 3:  # three warm-ups
            firsts.append((tr.arrivals[1] - tr.request_sent) * 1e3)  # events[1] is token 0
            totals.append((tr.arrivals[-1] - tr.request_sent) * 1e3)
        prompt_tokens = tr.events[0][1]["prompt_tokens"]
    return {"n": n, "prompt_tokens": prompt_tokens, "p50_ms": pct(firsts, 50),
            "p95_ms": pct(firsts, 95), "max_ms": max(firsts),
            "end_p50_ms": pct(totals, 50)}  # fmt: skip


def engine_ttft(alone, prompt: str, n: int) -> dict:
    """The same 32-token, max_tokens-1 job in-process: generate() as the executor runs it, and
    its parts called one by one (release; prefill enqueue; prefill on the device; first sample)."""
    from runtime.generate import TokenOut, generate

    engine, tok = alone.engine, alone.tokenizer
    ids = tok.encode(prompt, parse_special=True)
    firsts, parts = [], []
    for r in range(n + 3):
        t0 = time.perf_counter()
        for event in generate(engine, ids, GREEDY, max_tokens=1,
                              decoder=tok.incremental_decoder(), eog_ids=tok.eog_ids):  # fmt: skip
            if isinstance(event, TokenOut):
                first = (time.perf_counter() - t0) * 1e3
        t = [time.perf_counter()]
        engine.release(0)
        t.append(time.perf_counter())
        for at in range(0, len(ids), engine.prefill_chunk):
            engine.prefill(0, ids[at : at + engine.prefill_chunk])
        t.append(time.perf_counter())
        _sync(engine)
        t.append(time.perf_counter())
        engine.sample([0], [GREEDY], [ids], [0])
        t.append(time.perf_counter())
        if r >= 3:
            firsts.append(first)
            parts.append([(b - a) * 1e3 for a, b in zip(t, t[1:], strict=False)])
    names = ("release_ms", "prefill_enqueue_ms", "prefill_device_ms", "sample_ms")
    med = {k: statistics.median(p[i] for p in parts) for i, k in enumerate(names)}
    return {"n": n, "p50_ms": pct(firsts, 50), "p95_ms": pct(firsts, 95), **med}


def cancel_latency(harness, url: str, n: int, after: int = 8) -> dict:
    lat, acks, extra = [], [], []
    with httpx.Client(timeout=30) as stream_client, httpx.Client(timeout=30) as cancel_client:
        for r in range(n + 2):
            job = f"cancel-{r}"
            body = {"job_id": job, "prompt": bench_http.PROMPT, "max_tokens": 1024,
                    "temperature": 0.0}  # fmt: skip
            parser, t_cancel, terminal, after_cancel = harness.SSEParser(), None, None, 0
            with stream_client.stream("POST", f"{url}/execute", json=body) as response:
                for chunk in response.iter_text():
                    for name, data in parser.feed(chunk):
                        if name in harness.TERMINAL_EVENTS:
                            terminal, t_end = (name, data), time.perf_counter()
                        elif name == "token" and t_cancel is not None:
                            after_cancel += 1
                        elif name == "token" and data["i"] + 1 >= after:
                            t_cancel = time.perf_counter()
                            ack = cancel_client.post(f"{url}/cancel", json={"job_id": job})
                            t_ack = time.perf_counter()
                            assert ack.status_code == 202, ack.text
            assert terminal and terminal[1].get("code") == "CANCELLED", terminal
            if r >= 2:  # two warm-ups
                lat.append((t_end - t_cancel) * 1e3)
                acks.append((t_ack - t_cancel) * 1e3)
                extra.append(after_cancel)
    return {"n": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
            "ack_p50_ms": pct(acks, 50), "tokens_after_cancel_max": max(extra)}  # fmt: skip


def stream_loop(url: str, seconds: float, tokens: int) -> None:
    """Hidden mode (--stream-loop): stream greedy jobs back to back for `seconds`."""
    harness = bench_http._load_harness()
    deadline, r = time.monotonic() + seconds, 0
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            body = {"job_id": f"load-{os.getpid()}-{r}", "prompt": bench_http.PROMPT,
                    "max_tokens": tokens, "temperature": 0.0}  # fmt: skip
            harness.stream_execute(client, url, body, timeout_s=120)
            r += 1


def health_latency(url: str, seconds: float, every_s: float, busy_tokens: int | None) -> dict:
    loader = None
    if busy_tokens:
        cmd = [sys.executable, __file__, "--stream-loop", url, str(seconds + 2), str(busy_tokens)]
        loader = subprocess.Popen(cmd)
        time.sleep(1.0)  # let the first stream start
    sampler = bench_http.HealthSampler(url, every_s)
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    if loader is not None:
        loader.wait(timeout=180)
    lat = sampler.latencies_ms
    return {"n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
            "statuses": sorted(sampler.statuses)}  # fmt: skip


def http_vs_engine(harness, alone, client, url: str, tokens: int, reps: int) -> dict:
    alone.run(8)
    bench_http.bench_http_stream(harness, client, url, 8, "vs-warm")
    engine, http = [], []
    for r in range(reps):  # interleaved, so drift hits both sides alike
        engine.append(alone.run(tokens))
        http.append(bench_http.bench_http_stream(harness, client, url, tokens, f"vs-{r}"))
    e, h = bench_http._summary(engine), bench_http._summary(http)
    return {"tokens": h["tokens"], "engine_median_tps": e["median_tps"],
            "engine_best_tps": e["best_tps"], "http_median_tps": h["median_tps"],
            "http_best_tps": h["best_tps"], "ratio_median": h["median_tps"] / e["median_tps"],
            "ratio_best": h["best_tps"] / e["best_tps"],
            "server_tps": statistics.median(r["server_decode_tps"] for r in http),
            "same_text": len({r["text"] for r in engine + http}) == 1}  # fmt: skip


# ----------------------------------------------------------------------------- report


def device_name(backend: str) -> str:
    if backend != "cuda":
        return "cpu"
    import pycuda.driver as drv

    drv.init()
    dev = drv.Device(0)
    return f"{dev.name()} ({dev.total_memory() / 2**30:.0f} GiB)"


def report(res: dict, peak_gbps: float) -> str:
    e, lc = res["engine"], res.get("llama_cpp", {}).get("tests", {})
    roof = peak_gbps * 1e9 / res["weight_bytes"]
    lines = [f"device: {res['device']}; model: {res['model']} ({res['weight_bytes'] / 1e6:.1f} MB "
             f"of weights; roofline {roof:,.0f} tokens/s at {peak_gbps:.0f} GB/s)",  # fmt: skip
             f"{'test':<8}{'ours t/s':>11}{'ms/token':>10}{'roofline':>10}"
             f"{'llama.cpp t/s':>15}{'ours/llama':>11}"]  # fmt: skip
    for test, tps in e.items():
        ref = lc.get(test, {}).get("tokens_per_s")
        # prefill reads the weights once per pass, not per token: no per-token roofline
        frac = f"{tps / roof:>10.1%}" if test.startswith("tg") else f"{'-':>10}"
        lines.append(f"{test:<8}{tps:>11,.1f}{1e3 / tps:>10.4f}{frac}"
                     + (f"{ref:>15,.1f}{tps / ref:>11.2f}" if ref else ""))  # fmt: skip

    def target(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    t, v, hb, c = res["ttft"], res["http_vs_engine"], res["health_busy"], res["cancel"]
    et = res["engine_ttft"]
    loads = res["load_to_ready_s"]
    lines += [
        f"TTFT HTTP ({t['prompt_tokens']}-token prompt, max_tokens 1, n={t['n']}): "
        f"p50 {t['p50_ms']:.2f} ms  p95 {t['p95_ms']:.2f} ms  max {t['max_ms']:.2f} ms  "
        f"[p50 < 10 ms: {target(t['p50_ms'] < 10)}]",
        f"  same job in-process (generate): p50 {et['p50_ms']:.2f} ms  p95 {et['p95_ms']:.2f} ms;"
        f" release {et['release_ms']:.2f}, prefill enqueue {et['prefill_enqueue_ms']:.2f}, on device "
        f"{et['prefill_device_ms']:.2f}, first sample {et['sample_ms']:.2f} ms (medians)",
        f"decode via HTTP/SSE vs engine ({v['tokens']} tokens, greedy): median "
        f"{v['http_median_tps']:,.1f} vs {v['engine_median_tps']:,.1f} t/s = "
        f"{v['ratio_median']:.1%}; best {v['ratio_best']:.1%}; server side "
        f"{v['server_tps']:,.1f}; same text {v['same_text']} [>= 95 %: "
        f"{target(v['ratio_median'] >= 0.95)}]",
        f"/health idle: p50 {res['health_idle']['p50_ms']:.2f} ms  p99 "
        f"{res['health_idle']['p99_ms']:.2f} ms (n={res['health_idle']['n']})",
        f"/health while streaming: p50 {hb['p50_ms']:.2f} ms  p99 {hb['p99_ms']:.2f} ms  max "
        f"{hb['max_ms']:.2f} ms (n={hb['n']}, {hb['statuses']}) [p99 < 10 ms: "
        f"{target(hb['p99_ms'] < 10)}]",
        f"cancel -> error CANCELLED (n={c['n']}): p50 {c['p50_ms']:.2f} ms  p99 "
        f"{c['p99_ms']:.2f} ms  max {c['max_ms']:.2f} ms; 202 after {c['ack_p50_ms']:.2f} ms; "
        f"<= {c['tokens_after_cancel_max']} tokens after [p99 < 10 ms: {target(c['p99_ms'] < 10)}]",
        "load to ready (process start -> /health ready): "
        + ", ".join(f"{s:.2f} s" for s in loads)
        + f" [warm < 2 s: {target(max(loads[1:]) < 2)}]; in-process engine load "
        f"{res['engine_load_s']:.2f} s",
        f"load phases of the last start: {res['load_phases']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="GGUF file (default: the embedded model)")
    ap.add_argument("--backend", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument(
        "--llama-cpp",
        type=Path,
        help="llama.cpp build folder (bench/llama_cpp.py build), or its packed source "
        "(.device-kit/llama-src), which is then built first",
    )
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--decode-tokens", default="128,512")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--stream-tokens", type=int, default=512, help="HTTP vs engine run length")
    ap.add_argument("--ttft-requests", type=int, default=60)
    ap.add_argument("--cancel-samples", type=int, default=40)
    ap.add_argument("--health-seconds", type=float, default=4.0)
    ap.add_argument("--peak-gbps", type=float, default=3350.0)
    ap.add_argument("--log-dir", default=os.environ.get("OUT") or "/tmp")
    ap.add_argument("--stream-loop", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stream_loop:
        stream_loop(args.stream_loop[0], float(args.stream_loop[1]), int(args.stream_loop[2]))
        return 0
    if args.model is None:
        args.model = bench_http._default_model()
    harness = bench_http._load_harness()
    res: dict = {"device": device_name(args.backend), "model": args.model.name,
                 "backend": args.backend}  # fmt: skip

    t0 = time.perf_counter()
    alone = bench_http.EngineAlone(types.SimpleNamespace(
        model=str(args.model), backend=args.backend, max_context=args.max_context))  # fmt: skip
    res["engine_load_s"] = time.perf_counter() - t0
    gc.freeze()  # this process's own full collections (tokenizer tables) would stall the probes
    res["weight_bytes"] = alone.model.total_tensor_bytes
    try:
        decode_ns = [int(n) for n in args.decode_tokens.split(",")]
        res["engine"] = engine_figures(alone.engine, decode_ns, args.prefill_tokens, args.reps)
        print("engine:", json.dumps(res["engine"]), flush=True)
        if args.llama_cpp:
            build_dir = args.llama_cpp
            if llama_cpp.find_llama_bench(build_dir) is None:  # a source: build it first (~4 min)
                build_dir = Path("/tmp/llama-cpp-build")
                llama_cpp.build(args.llama_cpp, build_dir, log=sys.stdout)
            res["llama_cpp"] = llama_cpp.run(build_dir, args.model, reps=args.reps)
            print("llama.cpp:", json.dumps(res["llama_cpp"]), flush=True)
        worker, first, wall = launch(harness, args, "bench-1")
        try:
            url = worker.base_url
            res["load_phases"] = load_phases(worker, wall)
            with httpx.Client(timeout=60) as client:
                prompt32 = prompt_of(alone.tokenizer, 32)
                res["ttft"] = ttft(harness, client, url, prompt32, args.ttft_requests)
                res["engine_ttft"] = engine_ttft(alone, prompt32, args.ttft_requests)
                res["http_vs_engine"] = http_vs_engine(
                    harness, alone, client, url, args.stream_tokens, args.reps
                )
            shown = ("ttft", "engine_ttft", "http_vs_engine")
            print("http:", json.dumps({k: res[k] for k in shown}), flush=True)
            res["health_idle"] = health_latency(url, 1.0, 0.002, None)
            res["health_busy"] = health_latency(url, args.health_seconds, 0.002, args.stream_tokens)
            res["cancel"] = cancel_latency(harness, url, args.cancel_samples)
        finally:
            worker.stop()
        loads = [first]
        for k in (2, 3):  # warm kernel cache: the engine above and worker 1 compiled
            worker, seconds, wall = launch(harness, args, f"bench-{k}")
            res["load_phases"] = load_phases(worker, wall)
            worker.stop()
            loads.append(seconds)
        res["load_to_ready_s"] = loads
    finally:
        alone.close()
    text = report(res, args.peak_gbps)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({**res, "table": text}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
