"""Engine checks shared by the GPU tests and their runs on the simulated GPU (sim_gpu.py).

Each check takes a `load(model, **options)` that returns a CUDA engine, so the same assertions
run on an H200 (`CudaEngine.load`) and here without one (the same call under `simulated_gpu`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine
from runtime.sampling import SamplingParams
from tools.make_synthetic_gguf import synthetic_vocab, write_synthetic_model
from tools.synthetic_families import sentencepiece_vocab

#: relative L2 error of the logits against the fp32 numpy engine on synthetic models: the GPU
#: keeps K/V in fp16 and rounds X and W of the prefill products to fp16 (tensor cores)
SYNTHETIC_TOL = 3e-3
GREEDY = SamplingParams(temperature=0.0)
UNUSED = 5  # token type of an id that is no token (runtime.models.vocab)

Load = Callable[..., Any]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def gemma3_file(path: Path, *, n_layers: int = 7, window: int = 16, **kw) -> Path:
    """Synthetic Gemma-3-270M (its shapes and type mix) with `n_layers` layers (layer 5 is the
    first global one) and a short sliding window, so short prompts cross it."""
    meta = {"gemma3.attention.sliding_window": window, **kw.pop("metadata", {})}
    return write_synthetic_model(
        path, family="gemma3", n_layers=n_layers, vocab_size=kw.pop("vocab_size", 1400),
        metadata=meta, seed=kw.pop("seed", 11), **kw,
    )  # fmt: skip


def banning_file(path: Path, family: str, banned: Sequence[int], vocab: int) -> Path:
    """2 layers of the synthetic `family` model with token type UNUSED for `banned` (the same
    weights whatever `banned` is)."""
    kw: dict[str, Any] = {"n_layers": 2, "vocab_size": vocab, "seed": 21}
    types = list(sentencepiece_vocab(vocab)[2] if family == "gemma3" else synthetic_vocab(vocab)[1])
    for i in banned:
        types[i] = UNUSED
    meta = {"tokenizer.ggml.token_type": types}  # the key keeps its GGUF type (INT32)
    if family == "gemma3":
        return gemma3_file(path, metadata=meta, **kw)
    return write_synthetic_model(path, family=family, metadata=meta, **kw)


def compare_with_numpy(
    engines: dict[str, Any], ref: NumpyEngine, prompt: Sequence[int], steps: Sequence[int]
) -> dict[str, float]:
    """Prefill `prompt`, then decode `steps` on every engine and on `ref`: the worst relative
    logit error of each engine against ref. Engines named "graph" and "fused_eager" must give
    bitwise the same logits (the graph replays the eager launches), "eager" (unfused kernels)
    within 1e-4 of "graph"."""
    for e in (*engines.values(), ref):
        e.reset()
        e.prefill(list(prompt))
    worst = {name: rel(e.logits(), ref.logits()) for name, e in engines.items()}
    for t in steps:
        for e in (*engines.values(), ref):
            e.step(int(t))
        want = ref.logits()
        got = {name: e.logits() for name, e in engines.items()}
        for name, logits in got.items():
            worst[name] = max(worst[name], rel(logits, want))
        if "fused_eager" in got:
            np.testing.assert_array_equal(got["graph"], got["fused_eager"])
        if "eager" in got:
            assert rel(got["eager"], got["graph"]) < 1e-4
    assert all(e.position == len(prompt) + len(steps) for e in engines.values())
    return worst


def whole_and_split(engine, prompt: Sequence[int], k: int, *, decode_rest: bool):
    """(logits after prefill(prompt), logits after prefill(prompt[:k]) and then the rest: as
    decode steps, or as a second prefill)."""
    engine.reset()
    engine.prefill(list(prompt))
    whole = engine.logits()
    engine.reset()
    engine.prefill(list(prompt[:k]))
    if decode_rest:
        for t in prompt[k:]:
            engine.step(int(t))
    else:
        engine.prefill(list(prompt[k:]))
    return whole, engine.logits()


def check_banned_never_sampled(load: Load, tmp_path: Path, family: str, suffix: bool) -> None:
    """The id the model prefers is made unsampleable (as a suffix of the vocabulary, or among
    scattered ids): greedy and random sampling never pick it, at the prefill and at every decode
    step, and `logits()` still shows it as the largest (unmasked)."""
    vocab = 1300
    with open_gguf(banning_file(tmp_path / "free.gguf", family, [], vocab)) as m:
        ref = NumpyEngine.load(m, max_context=64)
        for seed in range(20):  # a prompt whose preferred id leaves room below it (a suffix)
            prompt = [int(t) for t in np.random.default_rng(seed).integers(0, vocab, 5)]
            ref.reset()
            ref.prefill(prompt)
            top = int(np.argmax(ref.logits()))  # the id the unmasked model prefers
            if top > 100:
                break
    banned = sorted(set(range(top, vocab) if suffix else (top, 3, vocab - 1)))
    with open_gguf(banning_file(tmp_path / "banned.gguf", family, banned, vocab)) as m:
        e = load(m, max_context=64)
        try:
            ref = NumpyEngine.load(m, max_context=64)
            assert ref.banned_ids.tolist() == banned
            if suffix:  # the argmax and the sampler read only the logits before the suffix
                assert (e.fwd.mask.n_sampled, e.fwd.mask.ids.size, e.sampler.vocab) == (top, 0, top)
                assert "mask.ids" not in e.fwd.b
            else:
                assert e.fwd.mask.ids.tolist() == banned and e.sampler.vocab == vocab
            for x in (e, ref):
                x.prefill(prompt)
            logits = e.logits()
            assert int(np.argmax(logits)) == top  # logits() is not masked
            assert rel(logits, ref.logits()) < SYNTHETIC_TOL
            want = ref.sample(GREEDY, prompt, 0)
            assert want != top and e.sample(GREEDY, prompt, 0) == want
            hot = SamplingParams(temperature=1.5, seed=9)
            picks = {e.sample(hot, prompt, d) for d in range(40)}
            assert picks.isdisjoint(banned) and len(picks) > 3, picks
            token = want
            for i in range(20):  # decode: the step's own argmax honours the mask too
                e.step(token)
                ref.step(token)
                token = e.sample(GREEDY, (), i)
                assert token not in banned
                top2 = np.sort(np.delete(ref.logits(), banned))[-2:]  # a near tie may differ
                assert token == ref.sample(GREEDY, (), i) or top2[1] - top2[0] < 1e-2
        finally:
            e.close()
