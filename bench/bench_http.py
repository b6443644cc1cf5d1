"""HTTP/SSE overhead benchmark: tokens/s through a real worker vs the engine alone, /health latency.

    .venv/bin/python bench/bench_http.py [--backend cpu|cuda] [--model PATH] [--tokens 128]

1. Engine alone, in this process: `load_engine` + `runtime.generate.generate`, greedy, the same
   prompt tokens and max_tokens as the HTTP run; token times taken as the generator yields.
2. A real worker subprocess (`python -m runtime.cli`, started by the e2e harness): the same
   request through `POST /execute`; token times taken as each SSE event is parsed.
3. The same request again while another thread samples `GET /health` every `--health-every-ms`;
   and /health alone on the idle worker, for comparison.

Decode tokens/s = (tokens - 1) / (last token time - first token time) on both sides, so prefill
and time-to-first-token do not dilute it; TTFT is reported separately. Greedy decoding makes both
sides generate the same tokens, which the benchmark checks. Numbers are printed, never asserted
(issue 3 targets: HTTP >= 95 % of the engine's decode tokens/s, /health p99 < 10 ms).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when a goldsmith in "
    "Mainz combined movable metal type, oil-based ink and a wooden screw press. Describe how it"
)


def _load_harness():
    """tests/e2e/conftest.py by path: it is the one worker-subprocess helper we keep."""
    path = REPO_ROOT / "tests" / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("e2e_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _decode_rate(times: list[float]) -> float:
    """Tokens/s between the first and the last token (prefill excluded)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def bench_engine(args) -> dict:
    """Engine alone: same prompt ids, greedy, max_tokens; returns times and the text."""
    from runtime.backends import load_engine
    from runtime.generate import Finished, TokenOut, generate
    from runtime.gguf_file import open_gguf
    from runtime.sampling import SamplingParams
    from runtime.tokenizer import Tokenizer

    model_path = Path(args.model) if args.model else _default_model()
    model = open_gguf(model_path)
    tokenizer = Tokenizer.from_metadata(model.metadata)
    prompt_ids = tokenizer.encode(PROMPT, parse_special=True)  # adds BOS as the model asks
    engine = load_engine(
        model_path, backend=args.backend, max_context=args.max_context, progress=None
    )
    params = SamplingParams(temperature=0.0, seed=1)
    try:
        runs = []
        for max_tokens in (8, args.tokens):  # the first is a warm-up
            t0 = time.perf_counter()
            times: list[float] = []
            text: list[str] = []
            finished = None
            for event in generate(
                engine,
                prompt_ids,
                params,
                max_tokens=max_tokens,
                decoder=tokenizer.incremental_decoder(),
                eog_ids=tokenizer.eog_ids,
            ):
                if isinstance(event, TokenOut):
                    times.append(time.perf_counter())
                    text.append(event.text)
                elif isinstance(event, Finished):
                    finished = event
            runs.append((t0, times, "".join(text), finished))
    finally:
        engine.close()
        model.close()
    t0, times, text, finished = runs[-1]
    return {
        "prompt_tokens": len(prompt_ids),
        "tokens": len(times),
        "ttft_ms": (times[0] - t0) * 1e3,
        "decode_tps": _decode_rate(times),
        "text": text,
        "stop_reason": finished.stop_reason if finished else None,
    }


def _default_model() -> Path:
    from runtime.default_model import default_model_path

    return default_model_path()


def bench_http_stream(harness, client: httpx.Client, base_url: str, args, job: str) -> dict:
    body = {
        "job_id": job,
        "prompt": PROMPT,
        "max_tokens": args.tokens,
        "temperature": 0.0,
        "seed": 1,
    }
    tr = harness.stream_execute(client, base_url, body, timeout_s=600)
    if tr.status_code != 200:
        raise RuntimeError(f"/execute answered {tr.status_code}: {tr.raw[:300]}")
    harness.check_stream(tr.events)
    times = [t for (name, _), t in zip(tr.events, tr.arrivals, strict=True) if name == "token"]
    started, end = tr.events[0][1], tr.terminal[1]
    return {
        "prompt_tokens": started.get("prompt_tokens"),
        "tokens": len(times),
        "ttft_ms": (times[0] - tr.request_sent) * 1e3 if times else float("nan"),
        "decode_tps": _decode_rate(times),
        "server_decode_tps": (end["tokens_out"] - 1) / (end["decode_time_ms"] / 1e3)
        if end.get("decode_time_ms")
        else float("nan"),
        "text": tr.text,
        "stop_reason": end.get("stop_reason"),
    }


class HealthSampler(threading.Thread):
    """GETs /health every `every_s` on its own connection until stopped; records latencies."""

    def __init__(self, base_url: str, every_s: float):
        super().__init__(daemon=True)
        self.url = f"{base_url}/health"
        self.every_s = every_s
        self.latencies_ms: list[float] = []
        self.statuses: set[str] = set()
        self._stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            client.get(self.url)  # open the connection outside the measurement
            while not self._stop.is_set():
                t0 = time.perf_counter()
                response = client.get(self.url)
                self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                self.statuses.add(response.json().get("status"))
                self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=10)


def _health_row(name: str, sampler: HealthSampler) -> str:
    lat = sampler.latencies_ms
    return (
        f"{name:<34} n={len(lat):<5} p50={_percentile(lat, 50):6.2f} ms  "
        f"p99={_percentile(lat, 99):6.2f} ms  max={max(lat, default=float('nan')):6.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per run")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--health-every-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    harness = _load_harness()

    print(f"engine alone ({args.backend}) ...", flush=True)
    engine = bench_engine(args)

    print("starting a worker ...", flush=True)
    extra = ("--model", args.model) if args.model else ()
    with (
        harness.start_worker(
            backend=args.backend,
            worker_id="bench-http",
            max_context=args.max_context,
            extra_args=extra,
        ) as worker,
        httpx.Client() as client,
    ):
        idle = HealthSampler(worker.base_url, args.health_every_ms / 1e3)
        idle.start()
        time.sleep(2.0)
        idle.stop()
        bench_http_stream(harness, client, worker.base_url, argparse.Namespace(tokens=8), "warm")
        http = bench_http_stream(harness, client, worker.base_url, args, "plain")
        busy = HealthSampler(worker.base_url, args.health_every_ms / 1e3)
        busy.start()
        http_h = bench_http_stream(harness, client, worker.base_url, args, "with-health")
        busy.stop()
        health = worker.health(client)

    print()
    print(f"backend={args.backend} device={health.get('backend')} model={health.get('model')} "
          f"prompt_tokens engine={engine['prompt_tokens']} http={http['prompt_tokens']}")  # fmt: skip
    print(f"{'run':<34} {'tokens':>6} {'TTFT ms':>9} {'decode tok/s':>13} {'vs engine':>10}")
    for name, row in (
        ("engine alone (in-process)", engine),
        ("HTTP/SSE", http),
        ("HTTP/SSE + /health sampling", http_h),
    ):
        ratio = row["decode_tps"] / engine["decode_tps"]
        print(
            f"{name:<34} {row['tokens']:>6} {row['ttft_ms']:>9.1f} "
            f"{row['decode_tps']:>13.2f} {ratio:>9.1%}"
        )
    print(f"{'HTTP server-side (end.decode_time_ms)':<34} {'':>6} {'':>9} "
          f"{http['server_decode_tps']:>13.2f}")  # fmt: skip
    print(_health_row("/health, idle worker", idle))
    print(_health_row("/health, while streaming", busy))
    print(f"/health statuses seen while streaming: {sorted(busy.statuses)}")
    same = engine["text"] == http["text"] == http_h["text"]
    print(f"greedy outputs identical (engine vs HTTP): {same}")
    if not same:
        print(f"  engine: {engine['text']!r}\n  http:   {http['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
