"""OpenAI /v1 streaming beside the native /execute route, on one worker: decode tokens/s and TTFT.

    .venv/bin/python bench/bench_openai_stream.py --backend cuda --model PATH --out DIR   (H200)
    .venv/bin/python bench/bench_openai_stream.py --backend cpu --tokens 24 --repeats 2   (here)

One real worker subprocess (the e2e harness). Interleaved, `--repeats` times each, all greedy,
each /v1 route beside the native request that reaches the engine with the same prompt tokens:
- `native prompt` (POST /execute, `prompt`) and `v1/completions` (`prompt`, `stream: true`);
- `native chat` (POST /execute, `messages`) and `v1/chat` (`messages`, `include_usage` on);
  left out when the model has no chat template (a base model such as Gemma 3 270M).
Token times are taken as each native `token` event / each /v1 chunk with text is parsed (the /v1
grammar is checked on every run by tests/openai_sse.py). Decode tokens/s = (tokens - 1) / (last
token time - first token time), so prefill does not dilute it; TTFT = first token's arrival -
request sent. The server's decode rate (the native `end` event's decode_time_ms) is the engine's
rate as the executor sees it. Issue 11's target: /v1 streaming >= 95 % of it, at the native
route's TTFT. Each pair's greedy texts must match (checked, printed).

Bounded: every stream has a timeout, and the whole run stops at `--deadline-s`. Numbers are
printed and written to DIR/openai-stream-<backend>-<model>.json and .txt, never asserted.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_http import PROMPT, _decode_rate, _load_harness  # noqa: E402
from tests.openai_sse import DONE, ChunkReader, check_stream  # noqa: E402

STREAM_TIMEOUT_S = 300.0
#: kind -> (the native route's row, the /v1 row beside it)
PAIRS = {"completion": ("native prompt", "v1/completions"), "chat": ("native chat", "v1/chat")}


def _timed(client: httpx.Client, url: str, body: dict, feed, timeout_s: float) -> float:
    """POST `body`, hand each received piece and its arrival time to `feed`; returns t0."""
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    with client.stream("POST", url, json=body, timeout=60.0) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:300]!r}")
        for piece in response.iter_bytes():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: stream still running after {timeout_s} s")
            feed(piece, time.perf_counter())
    return t0


def run_native(harness, client, base_url: str, kind: str, tokens: int, job: str) -> dict:
    parser, times, texts, end = harness.SSEParser(), [], [], {}
    utf8 = codecs.getincrementaldecoder("utf-8")()

    def feed(piece: bytes, now: float) -> None:
        for name, data in parser.feed(utf8.decode(piece)):
            if name == "token":
                times.append(now)
                texts.append(data["t"])
            elif name in ("end", "error"):
                end.update(data, type=name)

    body = {"job_id": job, "max_tokens": tokens, "temperature": 0, "seed": 1, **_prompt(kind)}
    t0 = _timed(client, f"{base_url}/execute", body, feed, STREAM_TIMEOUT_S)
    harness.check_stream(parser.close())
    server = (end["tokens_out"] - 1) / (end["decode_time_ms"] / 1e3)
    return _row(times, t0, "".join(texts), end.get("stop_reason"), server_tps=server)


def run_v1(client, base_url: str, kind: str, tokens: int) -> dict:
    reader, times, texts = ChunkReader(), [], []
    key = "delta" if kind == "chat" else None

    def feed(piece: bytes, now: float) -> None:
        for event in reader.feed(piece):
            if event == DONE or not event.get("choices"):
                continue
            choice = event["choices"][0]
            text = choice[key].get("content", "") if key else choice["text"]
            if text:
                times.append(now)
                texts.append(text)

    body = {"max_tokens": tokens, "temperature": 0, "seed": 1, "stream": True, **_prompt(kind)}
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    if kind == "chat":
        body["stream_options"] = {"include_usage": True}
    t0 = _timed(client, base_url + path, body, feed, STREAM_TIMEOUT_S)
    got = check_stream(reader.close(), kind, include_usage=kind == "chat")
    if got["error"] is not None:
        raise RuntimeError(f"{path}: the stream ended with an error: {got['error']}")
    assert got["text"] == "".join(texts)
    return _row(times, t0, got["text"], got["finish_reason"])


def _prompt(kind: str) -> dict:
    if kind == "chat":
        return {"messages": [{"role": "user", "content": PROMPT}]}
    return {"prompt": PROMPT}


def has_chat_template(model: str | None) -> bool:
    from runtime.default_model import default_model_path
    from runtime.gguf_header import read_header

    path = Path(model) if model else default_model_path()
    return bool(read_header(path).metadata.get("tokenizer.chat_template"))


def _row(times: list[float], t0: float, text: str, stop, server_tps=float("nan")) -> dict:
    return {
        "tokens": len(times),  # chunks with text (a token held back by the decoder is not one)
        "ttft_ms": (times[0] - t0) * 1e3 if times else float("nan"),
        "decode_tps": _decode_rate(times),
        "server_tps": server_tps,
        "text": text,
        "stop": stop,
    }


def summary(runs: list[dict]) -> dict:
    rates = [r["decode_tps"] for r in runs]
    return {
        "runs": len(runs),
        "tokens": runs[-1]["tokens"],
        "ttft_ms_median": statistics.median(r["ttft_ms"] for r in runs),
        "ttft_ms_best": min(r["ttft_ms"] for r in runs),
        "decode_tps_median": statistics.median(rates),
        "decode_tps_best": max(rates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=512, help="max_tokens per run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per route")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--deadline-s", type=float, default=540.0, help="stop repeating after")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-results"))
    args = parser.parse_args(argv)
    harness = _load_harness()
    begun = time.monotonic()
    kinds = ["completion", "chat"] if has_chat_template(args.model) else ["completion"]
    runs: dict[str, list[dict]] = {name: [] for kind in kinds for name in PAIRS[kind]}
    print(f"starting a worker ({args.backend}, {args.model or 'default model'}) ...", flush=True)
    with (
        harness.start_worker(
            backend=args.backend, model=args.model, worker_id="bench-openai",
            max_context=args.max_context,
        ) as worker,
        httpx.Client() as client,
    ):  # fmt: skip
        url = worker.base_url
        for kind in kinds:  # first-call costs, once per route
            run_native(harness, client, url, kind, 8, f"warm-{kind}")
            run_v1(client, url, kind, 8)
        for r in range(args.repeats):
            if r and time.monotonic() - begun > args.deadline_s:
                print(f"deadline: stopped after {r} repeats", flush=True)
                break
            for kind in kinds:  # interleaved: a neighbour's burst hits both sides alike
                native, v1 = PAIRS[kind]
                runs[native].append(run_native(harness, client, url, kind, args.tokens, f"{r}"))
                runs[v1].append(run_v1(client, url, kind, args.tokens))
            print(f"repeat {r + 1}/{args.repeats} done", flush=True)
        health = worker.health(client)
    report = build_report(args, health, runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"openai-stream-{args.backend}-{health.get('model')}"  # one pair of files per model
    (args.out / f"{stem}.json").write_text(json.dumps(report["figures"], indent=2) + "\n")
    (args.out / f"{stem}.txt").write_text(report["text"])
    print(report["text"], end="")
    print(f"written: {args.out / stem}.json, .txt")
    return 0


def build_report(args, health: dict, runs: dict[str, list[dict]]) -> dict:
    """Each /v1 row against its native pair (same prompt tokens) and the server's decode rate."""
    rows = {name: summary(rs) for name, rs in runs.items()}
    lines = [
        f"backend={health.get('backend')} model={health.get('model')} tokens={args.tokens} "
        f"repeats={rows['native prompt']['runs']}",
        f"{'route':<16} {'tokens':>6} {'TTFT med':>9} {'TTFT best':>9} {'tok/s med':>9} "
        f"{'tok/s best':>10} {'server':>8} {'vs server':>9} {'vs native':>9} {'TTFT-native':>12}",
    ]
    identical = {}
    for kind, (native_name, v1_name) in PAIRS.items():
        if native_name not in rows:
            continue
        native = rows[native_name]
        # The engine's rate for this prompt, measured by the executor (native end events).
        server = statistics.median(r["server_tps"] for r in runs[native_name])
        for name in (native_name, v1_name):
            row = rows[name]
            row["server_decode_tps_median"] = server
            row["vs_server_decode"] = row["decode_tps_median"] / server
            row["vs_native_decode"] = row["decode_tps_median"] / native["decode_tps_median"]
            row["ttft_ms_minus_native"] = row["ttft_ms_median"] - native["ttft_ms_median"]
            lines.append(
                f"{name:<16} {row['tokens']:>6} {row['ttft_ms_median']:>9.1f} "
                f"{row['ttft_ms_best']:>9.1f} {row['decode_tps_median']:>9.2f} "
                f"{row['decode_tps_best']:>10.2f} {server:>8.2f} {row['vs_server_decode']:>9.1%} "
                f"{row['vs_native_decode']:>9.1%} {row['ttft_ms_minus_native']:>+10.1f}ms"
            )
        identical[kind] = len({r["text"] for r in runs[native_name] + runs[v1_name]}) == 1
    lines.append(f"greedy text identical within each pair (all runs): {identical}")
    if "native chat" not in rows:
        lines.append("chat left out: the model has no chat template")
    stops = sorted({str(r["stop"]) for rs in runs.values() for r in rs})
    lines.append(f"stop reasons seen (native, /v1): {stops}")
    figures = {
        "backend": health.get("backend"),
        "model": health.get("model"),
        "tokens": args.tokens,
        "routes": rows,
        "greedy_identical": identical,
        "runs": {name: [{k: v for k, v in r.items() if k != "text"} for r in rs]
                 for name, rs in runs.items()},
    }  # fmt: skip
    return {"figures": figures, "text": "\n".join(lines) + "\n"}


if __name__ == "__main__":
    sys.exit(main())
