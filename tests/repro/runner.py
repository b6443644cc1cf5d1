"""Token ids for the reproducibility suite (W-1031, W-1826), in this process or a fresh one.

    python tests/repro/runner.py --backend cpu|cuda [--model PATH] [--max-tokens N] [--runs R]

prints {"SEED/TEMPERATURE": [[ids of run 1], [ids of run 2], ...]} as JSON: every seed of
SEEDS at every temperature of TEMPERATURES, the runs interleaved (seed 42, 123, 999, 42, ...),
so that a job's state leaking into the next one would show. The engine is loaded through the
registry the worker uses (worker_orcd.engines registers cuda) and driven by runtime.generate,
exactly as the executor drives it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SEEDS = (42, 123, 999)
TEMPERATURES = (0.0, 0.7)
PROMPT = "Once upon a time"
MAX_CONTEXT = 256


def _path(model: str | None) -> Path:
    from tests.reference_data import real_model_path

    return Path(model) if model else real_model_path()


def load(backend: str, model: str | None):
    """(engine, tokenizer) for `model` (default: the real default model) on `backend`."""
    from runtime.backends import load_engine
    from runtime.gguf_file import open_gguf
    from runtime.tokenizer import Tokenizer
    from worker_orcd import engines

    engines.register()
    with open_gguf(_path(model)) as gguf:
        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        engine = load_engine(gguf, backend, max_context=MAX_CONTEXT)
    return engine, tokenizer


def load_tokenizer(model: str | None):
    from runtime.gguf_file import open_gguf
    from runtime.tokenizer import Tokenizer

    with open_gguf(_path(model)) as gguf:
        return Tokenizer.from_metadata(gguf.metadata)


def token_ids(engine, tokenizer, *, seed: int, temperature: float, max_tokens: int) -> list[int]:
    from runtime.generate import TokenOut, generate
    from runtime.sampling import SamplingParams

    params = SamplingParams(temperature=temperature, top_p=0.95, top_k=40, seed=seed)
    events = generate(
        engine,
        tokenizer.encode(PROMPT, parse_special=True),
        params,
        max_tokens=max_tokens,
        decoder=tokenizer.incremental_decoder(),
        eog_ids=tokenizer.eog_ids,
    )
    return [e.token_id for e in events if isinstance(e, TokenOut)]


def run_all(engine, tokenizer, *, max_tokens: int, runs: int) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for _ in range(runs):
        for temperature in TEMPERATURES:
            for seed in SEEDS:
                ids = token_ids(
                    engine, tokenizer, seed=seed, temperature=temperature, max_tokens=max_tokens
                )
                out.setdefault(f"{seed}/{temperature}", []).append(ids)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    engine, tokenizer = load(args.backend, args.model)
    try:
        result = run_all(engine, tokenizer, max_tokens=args.max_tokens, runs=args.runs)
    finally:
        engine.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
