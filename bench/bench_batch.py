"""Continuous batching benchmarks (issue 13): aggregate decode tokens/s at several batch sizes.

    .venv/bin/python bench/bench_batch.py cpu [--streams 8] [--tokens 32]
    .venv/bin/python bench/bench_batch.py gpu --model SmolLM2 --model QWEN.gguf \\
        [--parallel 1,4,16,64] [--http-clients 16] [--llama-batched-bench BUILD_OR_SRC]

cpu (item 6): the numpy engine with --max-batch N; N streams through one step loop
(`runtime.batcher.Batcher`, as the executor runs it) against the same N streams one after
another on the same engine. Prints both aggregate rates, their ratio (target >= 2.5x with 8
streams on 2 cores) and whether every stream got the same token ids both ways (batch invariance).

gpu (item 5; run by the lead on the H200): for each model, through the engine: prompts of
`--prompt` tokens prefilled into P slots, then `--gen` steps of sample + one batched decode for
all P; aggregate decode tokens/s = P * gen / time (llama-batched-bench's S_TG). Then
`--http-clients` concurrent clients against a real worker (`--max-batch` that many): aggregate
tokens/s and the per-stream inter-token p95. With `--llama-batched-bench`, llama.cpp's tool on
the same file (prompt 128, gen 128, -npl the same list), built from the sdist first when given a
source (bench/llama_cpp.py). Numbers are printed (and written with --json), never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import llama_cpp  # noqa: E402
from bench_http import PROMPT, _load_harness, _percentile  # noqa: E402


def _model_path(name: str | None) -> Path:
    from runtime.models.catalog import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL if name is None else name)


def _load(path: Path, backend: str, max_context: int, max_batch: int):
    from runtime.backends import load_engine
    from runtime.gguf_file import open_gguf
    from runtime.tokenizer import Tokenizer
    from worker_orcd import engines

    engines.register()
    with open_gguf(path) as gguf:
        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        engine = load_engine(
            gguf, backend, max_context=max_context, max_batch=max_batch, progress=None
        )
    return engine, tokenizer


# -- cpu: N streams together vs one after another -----------------------------------------------


def _streams(engine, tokenizer, jobs) -> tuple[list[list[int]], float]:
    """Run `jobs` [(prompt_ids, params, max_tokens)] together on one Batcher: their token ids and
    the wall time."""
    from runtime.batcher import Batcher
    from runtime.sequence import Sequence, TokenOut

    batcher = Batcher(engine)
    seqs = []
    for i, (ids, params, n) in enumerate(jobs):
        seq = Sequence(ids, params, max_tokens=n, decoder=tokenizer.incremental_decoder(),
                       eog_ids=(), max_context=engine.max_context, tag=i)  # fmt: skip
        batcher.admit(seq)
        seqs.append(seq)
    out: list[list[int]] = [[] for _ in jobs]
    t0 = time.perf_counter()
    while batcher.busy:
        for seq, event in batcher.step():
            if isinstance(event, Exception):
                raise event
            if isinstance(event, TokenOut):
                out[seq.tag].append(event.token_id)
    return out, time.perf_counter() - t0


def bench_cpu(args) -> dict:
    from runtime.sampling import SamplingParams

    engine, tokenizer = _load(_model_path(args.model[0] if args.model else None), "cpu",
                              args.max_context, args.streams)  # fmt: skip
    texts = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,",
             "Dear diary,", "The recipe calls for", "In 1905, Einstein", "Hello! How are"]  # fmt: skip
    jobs = [
        (tokenizer.encode(texts[i % len(texts)]),
         SamplingParams(temperature=0.8 if i % 2 else 0.0, seed=i), args.tokens)
        for i in range(args.streams)
    ]  # fmt: skip
    _streams(engine, tokenizer, jobs[:1])  # warm-up
    together, t_together = _streams(engine, tokenizer, jobs)
    alone, t_alone = [], 0.0
    for job in jobs:
        ids, t = _streams(engine, tokenizer, [job])
        alone.append(ids[0])
        t_alone += t
    tokens = sum(len(t) for t in together)
    engine.close()
    return {
        "streams": args.streams,
        "tokens": tokens,
        "together_s": round(t_together, 3),
        "one_after_another_s": round(t_alone, 3),
        "together_tokens_per_s": round(tokens / t_together, 2),
        "one_after_another_tokens_per_s": round(tokens / t_alone, 2),
        "speedup": round(t_alone / t_together, 2),
        "same_tokens": together == alone,
    }


# -- gpu: the engine at P streams, HTTP with many clients, llama.cpp ------------------------------


def engine_rates(path: Path, args, parallel: list[int]) -> dict:
    from runtime.sampling import SamplingParams

    engine, _ = _load(path, args.backend, args.prompt + args.gen + 8, max(parallel))
    rng = np.random.default_rng(0)
    vocab = engine.config.vocab_size
    greedy = SamplingParams(temperature=0.0)
    rows = {}
    for p in parallel:
        slots = list(range(p))
        prompts = [rng.integers(100, min(vocab, 30000), args.prompt).tolist() for _ in slots]
        for slot in slots:
            engine.release(slot)
        t0 = time.perf_counter()
        for slot, ids in zip(slots, prompts, strict=True):
            for at in range(0, len(ids), engine.prefill_chunk):
                engine.prefill(slot, ids[at : at + engine.prefill_chunk])
        histories = [ids[-64:] for ids in prompts]
        tokens = engine.sample(slots, [greedy] * p, histories, [0] * p)  # waits for the prefill
        t1 = time.perf_counter()
        for step in range(1, args.gen):
            engine.decode(slots, tokens)
            tokens = engine.sample(slots, [greedy] * p, histories, [step] * p)
        t2 = time.perf_counter()
        rows[p] = {
            "prefill_s": round(t1 - t0, 4),
            "decode_s": round(t2 - t1, 4),
            "decode_tokens_per_s": round(p * (args.gen - 1) / (t2 - t1), 1),
        }
        print(f"  {path.name} P={p:3d}: {rows[p]['decode_tokens_per_s']:10.1f} tok/s", flush=True)
    engine.close()
    return rows


def http_rates(path: Path, args) -> dict:
    harness = _load_harness()
    n = args.http_clients
    extra = ("--max-batch", str(min(64, n)), "--queue-size", str(max(16, n)))
    with harness.start_worker(backend=args.backend, model=str(path), max_context=1024,
                              extra_args=extra, worker_id="bench-batch") as worker:  # fmt: skip
        results: list[list[float]] = [[] for _ in range(n)]
        start = threading.Barrier(n)

        def client(i: int) -> None:
            body = {"job_id": f"b{i}", "prompt": PROMPT, "max_tokens": args.gen,
                    "temperature": 0.0, "seed": i}  # fmt: skip
            with httpx.Client(timeout=600) as c:
                start.wait()
                tr = harness.stream_execute(c, worker.base_url, body, timeout_s=600)
            results[i] = [t for (name, _), t in zip(tr.events, tr.arrivals, strict=True)
                          if name == "token"]  # fmt: skip

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    first = min(r[0] for r in results if r)
    last = max(r[-1] for r in results if r)
    gaps = [(b - a) * 1e3 for r in results for a, b in zip(r, r[1:], strict=False)]
    return {
        "clients": n,
        "tokens": sum(len(r) for r in results),
        "aggregate_tokens_per_s": round(sum(len(r) for r in results) / (last - first), 1),
        "inter_token_p50_ms": round(statistics.median(gaps), 3),
        "inter_token_p95_ms": round(_percentile(gaps, 95), 3),
    }


def llama_rates(build: str, path: Path, args, parallel: list[int]) -> dict:
    build_dir = Path(build)
    if llama_cpp.find_llama_bench(build_dir, "llama-batched-bench") is None:
        source, build_dir = build_dir, Path(args.log_dir) / "llama-build"
        llama_cpp.build(source, build_dir)
    res = llama_cpp.run_batched(build_dir, path, n_prompt=args.prompt, n_gen=args.gen,
                                parallel=tuple(parallel))  # fmt: skip
    return {b: row["decode_tokens_per_s"] for b, row in res["rows"].items()}


def bench_gpu(args) -> dict:
    parallel = [int(p) for p in args.parallel.split(",")]
    out = {}
    for name in args.model or [None]:
        path = _model_path(name)
        res: dict = {"engine": engine_rates(path, args, parallel)}
        if args.llama_batched_bench:
            res["llama_cpp"] = llama_rates(args.llama_batched_bench, path, args, parallel)
            res["ratio"] = {
                p: round(res["engine"][p]["decode_tokens_per_s"] / res["llama_cpp"][p], 2)
                for p in parallel
                if p in res["llama_cpp"]
            }
        if args.http_clients:
            res["http"] = http_rates(path, args)
        out[path.name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("cpu", "gpu"))
    parser.add_argument("--model", action="append", help="a GGUF path or catalog name (repeat)")
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--streams", type=int, default=8, help="cpu: concurrent streams")
    parser.add_argument("--tokens", type=int, default=32, help="cpu: tokens per stream")
    parser.add_argument("--max-context", type=int, default=256)
    parser.add_argument("--parallel", default="1,4,16,64")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--http-clients", type=int, default=16, help="gpu: 0 skips HTTP")
    parser.add_argument("--llama-batched-bench", default=None, help="build dir or llama.cpp source")
    parser.add_argument("--log-dir", default="/tmp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = bench_cpu(args) if args.mode == "cpu" else bench_gpu(args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
