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
from tests.cuda.one_slot import one_slot
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
        ref = one_slot(NumpyEngine.load(m, max_context=64))
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
            ref = one_slot(NumpyEngine.load(m, max_context=64))
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


# -- batch invariance ------------------------------------------------------------------------------

HOT = SamplingParams(temperature=0.8, seed=1234)


def run_slots(engine, jobs: dict[int, tuple[list[int], SamplingParams, int, int]]):
    """A minimal step loop over the slot interface: jobs[slot] = (prompt, params, n_tokens,
    join_step). A job is prefilled and sampled at its join step, then decodes one token per step
    beside every other running job, in one `decode` call for all of them. Returns slot ->
    (generated ids, the logits before each of its draws)."""
    out: dict[int, tuple[list[int], list[np.ndarray]]] = {s: ([], []) for s in jobs}
    running: dict[int, int] = {}  # slot -> the token it decodes next
    step = 0
    while len(running) or any(j[3] >= step for j in jobs.values()):
        for slot, (prompt, _, _, join) in jobs.items():
            if join == step:
                engine.release(slot)
                for at in range(0, len(prompt), engine.prefill_chunk):
                    engine.prefill(slot, prompt[at : at + engine.prefill_chunk])
                running[slot] = -1
        if running:
            going = [s for s, t in running.items() if t >= 0]
            if going:
                engine.decode(going, [running[s] for s in going])
            slots = list(running)
            for s in slots:
                out[s][1].append(engine.logits(s))
            params = [jobs[s][1] for s in slots]
            histories = [jobs[s][0] + out[s][0] for s in slots]
            draws = [len(out[s][0]) for s in slots]
            for s, token in zip(slots, engine.sample(slots, params, histories, draws), strict=True):
                assert token >= 0, f"slot {s}: non-finite logits"
                out[s][0].append(token)
                running[s] = token
                if len(out[s][0]) == jobs[s][2]:
                    del running[s]
                    engine.release(s)
        step += 1
    return out


def check_batch_invariance(engine, vocab: int, *, n_tokens: int = 6, crowd: int = 63) -> None:
    """A seeded job gives the same token ids and bitwise the same logits alone (slot 0), beside
    7 others (in slot 5, all joining at once), beside `crowd` others (the last slot, joining
    late, while the others decode; a prompt longer than a prefill chunk) and again alone (slot 0
    after the crowd): greedy and temperature 0.8. Needs `engine.max_batch` == crowd + 1 >= 8."""
    rng = np.random.default_rng(42)
    prompt = [int(t) for t in rng.integers(0, vocab, engine.prefill_chunk + 3)]
    others = [
        [int(t) for t in rng.integers(0, vocab, int(n))] for n in rng.integers(1, 9, max(crowd, 8))
    ]
    for params in (GREEDY, HOT):
        job = (prompt, params, n_tokens, 0)
        alone = run_slots(engine, {0: job})[0]
        jobs = {s: (others[s], HOT if s % 2 else GREEDY, n_tokens + s % 3, 0) for s in range(8)}
        jobs[5] = job
        beside_7 = run_slots(engine, jobs)[5]
        jobs = {
            s: (others[s], HOT if s % 3 else GREEDY, n_tokens + s % 5, s % 4) for s in range(crowd)
        }
        jobs[crowd] = (prompt, params, n_tokens, 3)  # joins after 3 steps of the others
        beside_many = run_slots(engine, jobs)[crowd]
        again = run_slots(engine, {0: job})[0]
        runs = {"beside 7": beside_7, f"beside {crowd}": beside_many, "again": again}
        for name, got in runs.items():
            assert got[0] == alone[0], f"{params}: {name} {got[0]} != alone {alone[0]}"
            for a, b in zip(got[1], alone[1], strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{params}: {name}")
        if params is HOT:  # the draw is random: a different seed gives another sequence
            other = run_slots(engine, {0: (prompt, SamplingParams(temperature=0.8, seed=7), 6, 0)})
            assert other[0][0] != alone[0]


def check_slots_match_numpy(engine, ref: NumpyEngine, *, n_tokens: int = 5) -> None:
    """Three jobs decoded together in slots 1, 2 and 3 (different prompt lengths) give each the
    numpy engine's logits (SYNTHETIC_TOL) and its greedy tokens (the reference: alone)."""
    rng = np.random.default_rng(3)
    vocab = engine.config.vocab_size
    prompts = {s: [int(t) for t in rng.integers(0, vocab, 2 + 7 * s)] for s in (1, 2, 3)}
    got = run_slots(engine, {s: (p, GREEDY, n_tokens, 0) for s, p in prompts.items()})
    reference = one_slot(ref)
    for s, prompt in prompts.items():
        reference.reset()
        reference.prefill(prompt)
        for i, (token, logits) in enumerate(zip(*got[s], strict=True)):
            want = reference.logits()
            assert rel(logits, want) < SYNTHETIC_TOL, (s, i)
            top2 = np.sort(want)[-2:]  # a near tie may go either way at fp16 KV
            assert token == int(np.argmax(want)) or top2[1] - top2[0] < 1e-2, (s, i)
            reference.step(token)


def check_a_nan_slot_on_a_poisoned_file(tmp_path: Path, **synthetic: Any) -> None:
    """A one-layer synthetic llama whose embedding row of "q" is NaN, on a 2-slot CUDA engine:
    `check_nonfinite_slot_ends_alone` with "q" poisoned and "a" clean. `synthetic`: more
    arguments of write_synthetic_model (the vocabulary size, smaller shapes)."""
    from cuda.engine import CudaEngine
    from tests.poisoned_gguf import poison_rows

    path = write_synthetic_model(
        tmp_path / "m.gguf", n_layers=1, seed=3, tied_output=False, **synthetic
    )
    poisoned = 3 + ord("q")
    with open_gguf(poison_rows(path, "token_embd.weight", [poisoned])) as m:
        e = CudaEngine.load(m, max_context=32, max_batch=2)
        try:
            check_nonfinite_slot_ends_alone(e, poisoned, clean=3 + ord("a"))
        finally:
            e.close()


def check_nonfinite_slot_ends_alone(engine, poisoned: int, clean: int) -> None:
    """A slot whose logits are NaN (its prompt holds `poisoned`, a NaN embedding row) gets
    NON_FINITE from `sample`, greedy and random, while the other slot of the same calls gets
    the tokens it gets alone; the engine goes on serving the poisoned slot after release."""
    from runtime.engine_api import NON_FINITE

    prompt = [clean, clean + 1, clean + 2]
    for params in (GREEDY, HOT):
        alone = run_slots(engine, {0: (prompt, params, 4, 0)})[0][0]
        engine.release(0)
        engine.release(1)
        engine.prefill(0, prompt)
        engine.prefill(1, [clean, poisoned])
        slots, ps, hs = [0, 1], [params, params], [prompt, [clean, poisoned]]
        got = engine.sample(slots, ps, hs, [0, 0])
        assert got[1] == NON_FINITE and got[0] == alone[0], got
        tokens = [got[0]]
        for i in range(1, 4):  # the poisoned slot is retired: slot 0 goes on by itself
            engine.decode([0], [tokens[-1]])
            tokens.append(engine.sample([0], [params], [prompt + tokens], [i])[0])
        assert tokens == alone
    engine.release(1)
    engine.prefill(1, prompt)
    assert (
        engine.sample([1], [GREEDY], [prompt], [0])[0]
        == run_slots(engine, {0: (prompt, GREEDY, 1, 0)})[0][0][0]
    )
