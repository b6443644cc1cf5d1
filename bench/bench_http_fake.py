"""HTTP/SSE streaming vs the engine alone with a stand-in engine of fixed step time: measures the
host side of streaming (executor thread, trio, SSE, the model's real tokenizer) without a GPU.

    .venv/bin/python bench/bench_http_fake.py --model PATH [--step-ms 0.9] [--tokens 256]

The stand-in behaves like the CUDA engine's greedy loop as seen from the host: `step()` returns
at once after a GIL-releasing call (a graph launch is a ctypes call), `sample()` waits with the
GIL released until `--step-ms` after the last step (a stream synchronize) and returns the next
id of a fixed text ("9, 10, 11, ..." encoded with the model's tokenizer). The rest is real: the
model's tokenizer and incremental decoder, `runtime.generate`, and a worker subprocess
(`worker_orcd`, with the stand-in registered as the "cpu" engine) serving `POST /execute`.
Compare the ratio across tokenizers (e.g. SmolLM2's against Qwen2.5's 151,936 ids) and step
times: a host-side cost that grows with the vocabulary shows up here; one that does not, and
still shows on the GPU, lives on the GPU side. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import bench_http  # noqa: E402


class FixedStepEngine:
    """The stand-in engine (see the module docstring)."""

    backend = "cpu"
    quant_kind = "fake"

    def __init__(self, max_context: int, ids: list[int], step_s: float):
        self.max_context, self._ids, self._step_s = max_context, ids, step_s
        self._pos, self._next, self._ready = 0, 0, 0.0

    @property
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        self._pos, self._next = 0, 0

    def prefill(self, tokens) -> None:
        self._pos += len(tokens)
        self._ready = time.perf_counter() + self._step_s

    def step(self, token: int) -> None:
        self._pos += 1
        self._ready = time.perf_counter() + self._step_s
        time.sleep(0)  # the GIL released around the launch, as ctypes does

    def logits(self):
        raise NotImplementedError("the stand-in engine has no logits")

    def sample(self, params, history, draw: int) -> int:
        wait = self._ready - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # GIL released, as in cuStreamSynchronize
        token = self._ids[self._next % len(self._ids)]
        self._next += 1
        return token

    def memory_bytes(self) -> int:
        return 0

    def check_residency(self):
        from runtime.engine_api import ResidencyReport

        return ResidencyReport(True, 0, "stand-in engine")

    def close(self) -> None:
        pass


def _register_stand_in(step_s: float) -> None:
    """The stand-in becomes the "cpu" engine of runtime.backends' registry (this process)."""
    from runtime.backends import register_engine

    def load_engine(gguf, *, max_context, progress=None, **opts):
        from runtime.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        ids = tokenizer.encode(", ".join(str(i) for i in range(9, 3000)), parse_special=False)
        if progress is not None:
            progress(1, 1)
        return FixedStepEngine(max_context, ids, step_s)

    register_engine("cpu", load_engine)


def worker_main(step_ms: float, cli_args: list[str]) -> int:
    """Hidden mode: a real worker whose backend loader returns the stand-in engine."""
    from worker_orcd.cli import main as cli_main

    _register_stand_in(step_ms / 1e3)
    return cli_main(cli_args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF path (its tokenizer is used; default: SmolLM2)")
    ap.add_argument("--step-ms", type=float, default=0.9, help="stand-in step time")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return worker_main(args.step_ms, args.worker)
    _register_stand_in(args.step_ms / 1e3)
    model = args.model or str(bench_http._default_model())
    alone = bench_http.EngineAlone(argparse.Namespace(model=model, backend="cpu", max_context=2048))
    harness = bench_http._load_harness()
    port = harness.free_port()
    cmd = [sys.executable, __file__, "--step-ms", str(args.step_ms), "--worker", "--port",
           str(port), "--backend", "cpu", "--model", model, "--max-context", "2048",
           "--worker-id", "fake-engine"]  # fmt: skip
    log = open(os.devnull, "wb")  # noqa: SIM115 (lives as long as the worker)
    proc = subprocess.Popen(cmd, cwd=BENCH.parent, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get(f"{url}/health").json().get("status") == "ready":
                        break
                except (httpx.TransportError, ValueError):
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the stand-in worker did not become ready")
                time.sleep(0.05)
            alone.run(8)
            bench_http.bench_http_stream(harness, client, url, 8, "warm")
            engine, http = [], []
            for r in range(args.repeats):  # interleaved
                engine.append(alone.run(args.tokens)["decode_tps"])
                http.append(
                    bench_http.bench_http_stream(harness, client, url, args.tokens, f"r{r}")
                )
    finally:
        proc.terminate()
        proc.wait(10)
        alone.close()
    e = statistics.median(engine)
    h = statistics.median(r["decode_tps"] for r in http)
    server = statistics.median(r["server_decode_tps"] for r in http)
    print(f"{Path(model).name}: step {args.step_ms} ms, engine alone {e:.0f} tokens/s, HTTP "
          f"{h:.0f} ({h / e:.1%}), server side {server:.0f} ({server / e:.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
