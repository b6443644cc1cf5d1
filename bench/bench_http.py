"""HTTP/SSE overhead benchmark: tokens/s through a real worker vs the engine alone, /health latency.

    .venv/bin/python bench/bench_http.py [--backend cpu|cuda] [--model PATH] [--tokens 128]

1. Engine alone, in this process: `load_engine` + `runtime.generate.generate`, greedy, the same
   prompt tokens and max_tokens as the HTTP run; token times taken as the generator yields.
2. A real worker subprocess (`python -m worker_orcd`, started by the e2e harness): the same
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
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# A continuation greedy decoding keeps going (a list of numbers) so every run reaches
# max_tokens; the cost of a decode step does not depend on what the token says.
PROMPT = "Here are the numbers from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8,"


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


class EngineAlone:
    """The engine in this process, driven by `generate` exactly as the executor drives it."""

    def __init__(self, args):
        from runtime.backends import load_engine
        from runtime.gguf_file import open_gguf
        from runtime.tokenizer import Tokenizer
        from worker_orcd import engines

        engines.register()  # the cuda engine is found by name, as in the worker

        model_path = Path(args.model) if args.model else _default_model()
        self.model = open_gguf(model_path)
        self.tokenizer = Tokenizer.from_metadata(self.model.metadata)
        self.prompt_ids = self.tokenizer.encode(PROMPT, parse_special=True)  # adds BOS itself
        self.engine = load_engine(
            self.model, backend=args.backend, max_context=args.max_context, progress=None
        )

    def run(self, max_tokens: int) -> dict:
        from runtime.generate import Finished, TokenOut, generate
        from runtime.sampling import SamplingParams

        times: list[float] = []
        text: list[str] = []
        finished = None
        t0 = time.perf_counter()
        for event in generate(
            self.engine,
            self.prompt_ids,
            SamplingParams(temperature=0.0, seed=1),
            max_tokens=max_tokens,
            decoder=self.tokenizer.incremental_decoder(),
            eog_ids=self.tokenizer.eog_ids,
        ):
            if isinstance(event, TokenOut):
                times.append(time.perf_counter())
                text.append(event.text)
            elif isinstance(event, Finished):
                finished = event
        return {
            "prompt_tokens": len(self.prompt_ids),
            "tokens": len(times),
            "ttft_ms": (times[0] - t0) * 1e3,
            "decode_tps": _decode_rate(times),
            "text": "".join(text),
            "stop_reason": finished.stop_reason if finished else None,
        }

    def close(self) -> None:
        self.engine.close()
        self.model.close()


def _default_model() -> Path:
    from runtime.default_model import default_model_path

    return default_model_path()


def bench_http_stream(
    harness, client: httpx.Client, base_url: str, max_tokens: int, job: str
) -> dict:
    body = {
        "job_id": job,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
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
        self._done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            client.get(self.url)  # open the connection outside the measurement
            while not self._done.is_set():
                t0 = time.perf_counter()
                response = client.get(self.url)
                self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                self.statuses.add(response.json().get("status"))
                self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def _health_row(name: str, sampler: HealthSampler) -> str:
    lat = sampler.latencies_ms
    return (
        f"{name:<34} n={len(lat):<5} p50={_percentile(lat, 50):6.2f} ms  "
        f"p99={_percentile(lat, 99):6.2f} ms  max={max(lat, default=float('nan')):6.2f} ms"
    )


def _summary(runs: list[dict]) -> dict:
    """Median and best decode rate over repeats (the machine may be shared: best is the
    least-disturbed run, the median the typical one)."""
    rates = [r["decode_tps"] for r in runs]
    return {
        "tokens": runs[-1]["tokens"],
        "ttft_ms": statistics.median(r["ttft_ms"] for r in runs),
        "median_tps": statistics.median(rates),
        "best_tps": max(rates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per side")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--health-every-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    harness = _load_harness()

    print(f"loading the engine in-process ({args.backend}) and starting a worker ...", flush=True)
    alone = EngineAlone(args)
    extra = ("--model", args.model) if args.model else ()
    try:
        with (
            harness.start_worker(
                backend=args.backend,
                worker_id="bench-http",
                max_context=args.max_context,
                extra_args=extra,
            ) as worker,
            httpx.Client() as client,
        ):
            url = worker.base_url
            idle = HealthSampler(url, args.health_every_ms / 1e3)
            idle.start()
            time.sleep(2.0)
            idle.stop()
            alone.run(8)  # warm-ups: first-call costs (page faults, caches) on both sides
            bench_http_stream(harness, client, url, 8, "warm")
            engine_runs, http_runs = [], []
            # Interleaved, so a neighbour's burst of CPU use hits both sides alike.
            for r in range(args.repeats):
                engine_runs.append(alone.run(args.tokens))
                http_runs.append(bench_http_stream(harness, client, url, args.tokens, f"run-{r}"))
            busy = HealthSampler(url, args.health_every_ms / 1e3)
            busy.start()
            http_h = bench_http_stream(harness, client, url, args.tokens, "with-health")
            busy.stop()
            health = worker.health(client)
    finally:
        alone.close()

    engine, http = _summary(engine_runs), _summary(http_runs)
    loaded = {**_summary([http_h]), "median_tps": http_h["decode_tps"]}
    print()
    print(f"backend={health.get('backend')} model={health.get('model')} repeats={args.repeats} "
          f"prompt_tokens engine={engine_runs[0]['prompt_tokens']} "
          f"http={http_runs[0]['prompt_tokens']}")  # fmt: skip
    print(f"{'decode tokens/s':<30} {'tokens':>6} {'TTFT ms':>8} {'median':>8} {'best':>8} "
          f"{'median vs engine':>17} {'best vs engine':>15}")  # fmt: skip
    for name, row in (
        ("engine alone (in-process)", engine),
        ("HTTP/SSE (client side)", http),
        ("HTTP/SSE + /health sampling", loaded),
    ):
        print(
            f"{name:<30} {row['tokens']:>6} {row['ttft_ms']:>8.1f} {row['median_tps']:>8.2f} "
            f"{row['best_tps']:>8.2f} {row['median_tps'] / engine['median_tps']:>17.1%} "
            f"{row['best_tps'] / engine['best_tps']:>15.1%}"
        )
    server = statistics.median(r["server_decode_tps"] for r in http_runs)
    print(f"{'HTTP server side (end event)':<30} {'':>6} {'':>8} {server:>8.2f}")
    print(_health_row("/health, idle worker", idle))
    print(_health_row("/health, while streaming", busy))
    print(f"/health statuses seen while streaming: {sorted(busy.statuses)}")
    all_runs = engine_runs + http_runs + [http_h]
    short = sorted({r["stop_reason"] for r in all_runs if r["tokens"] < args.tokens})
    if short:
        print(f"note: some runs stopped before --tokens ({short})")
    texts = {r["text"] for r in all_runs}
    print(f"greedy outputs identical (engine vs HTTP, all runs): {len(texts) == 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
