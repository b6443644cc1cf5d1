"""The GPU sampler kernels against runtime.sampling.sample_from_logits, token for token.

The chain runs in float64 on both sides with the same order and tie rules, and the draw is the
shared uniform(seed, draw), so every token must be equal (the only possible difference, the
rounding of a sum, would have to put u within ~1e-16 of a boundary). Cases cover the penalty with
repeated history ids, exact ties in the logits, every filter alone and together, and flat
distributions whose cut-off spans several 1024-candidate chunks.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.sampling import SamplingParams, sample_from_logits, uniform

VOCAB = 49_157  # not a multiple of the block
#: qwen2's and gemma3's vocabularies (the sampler's buffers are sized for the largest)
MODEL_VOCABS = [151_936, 262_144]


@pytest.fixture(scope="module")
def smp(cuda_ctx):
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import Ops

    ops = Ops(64)
    s = drv.Stream()
    most = max(VOCAB, *MODEL_VOCABS)
    marks = ga.zeros(most, np.uint8)
    xs = ga.empty(most, np.float64)
    pen = ga.empty(most, np.int32)
    out = ga.empty(1, np.int32)

    def run(logits: np.ndarray, p: SamplingParams, history, draw: int) -> int:
        ld = ga.to_gpu(logits.astype(np.float32))
        ids = np.unique(np.asarray(history, np.int64)).astype(np.int32)
        n_pen = ids.size if p.repetition_penalty != 1.0 else 0
        if n_pen:
            pen[: ids.size].set(ids)
        if p.temperature == 0.0:
            ops.sample_greedy(
                ld.gpudata, logits.size, pen.gpudata, n_pen, p.repetition_penalty,
                marks.gpudata, out.gpudata, s,
            )  # fmt: skip
        else:
            ops.sample_full(
                ld.gpudata, logits.size, pen.gpudata, n_pen, p.repetition_penalty, marks.gpudata,
                temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                u=uniform(p.seed, draw), xs=xs.gpudata, out=out.gpudata, stream=s,
            )  # fmt: skip
        s.synchronize()
        assert not marks.get().any(), "marks must be cleared after every call"
        return int(out.get()[0])

    return run


def _logits(kind: str, rng, vocab: int = VOCAB) -> np.ndarray:
    if kind == "peaked":  # like a language model: a few strong candidates
        x = rng.standard_normal(vocab) * 2.0
        x[rng.integers(0, vocab, 5)] += 12.0
    elif kind == "flat":  # thousands of near-equal candidates: multi-chunk walks
        x = rng.standard_normal(vocab) * 0.05
    else:  # "ties": few distinct values, so the id order decides
        x = rng.integers(0, 4, vocab).astype(np.float64)
    return x.astype(np.float32)


PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.0, repetition_penalty=1.3),
    SamplingParams(temperature=0.7, seed=11),
    SamplingParams(temperature=1.0, top_k=40, seed=12),
    SamplingParams(temperature=0.8, top_p=0.9, seed=13),
    SamplingParams(temperature=1.2, min_p=0.05, seed=14),
    SamplingParams(temperature=0.7, top_k=50, top_p=0.95, min_p=0.02, seed=15),
    SamplingParams(temperature=1.5, repetition_penalty=1.1, top_p=0.999, seed=16),
    SamplingParams(temperature=2.0, top_k=3000, seed=17),
    # REL-5: below the floors the params themselves change (greedy; penalty 1e-4), so the
    # kernels see only safe values and agree with the host chain
    SamplingParams(temperature=1e-300, seed=18),
    SamplingParams(temperature=0.9, repetition_penalty=1e-300, seed=19),
]


@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
@pytest.mark.parametrize("p", PARAMS, ids=lambda p: repr(p)[15:60])
def test_gpu_sampler_equals_host_chain(smp, kind, p):
    rng = np.random.default_rng([len(kind), p.seed, p.top_k])
    history = list(rng.integers(0, VOCAB, 40)) * 2  # repeated ids: penalized once
    mismatches = []
    for draw in range(12):
        logits = _logits(kind, rng)
        history[draw] = int(np.argmax(logits))  # the penalty matters for greedy too
        want = sample_from_logits(logits, p, history, draw)
        got = smp(logits, p, history, draw)
        if got != want:
            mismatches.append((draw, got, want))
    assert not mismatches


@pytest.mark.parametrize("vocab", MODEL_VOCABS)
@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
@pytest.mark.parametrize("p", PARAMS[::2], ids=lambda p: repr(p)[15:60])
def test_gpu_sampler_at_the_new_models_vocabularies(smp, vocab, kind, p):
    """qwen2 (151,936) and gemma3 (262,144 ids): the same token as the host chain, with the
    maximum placed near the end of the vocabulary too (the last blocks' ids)."""
    rng = np.random.default_rng([vocab, len(kind), p.seed])
    history = list(rng.integers(0, vocab, 30)) + [vocab - 1]
    mismatches = []
    for draw in range(4):
        logits = _logits(kind, rng, vocab)
        if draw % 2:
            logits[vocab - 1 - draw] = logits.max() + 1.0
        want = sample_from_logits(logits, p, history, draw)
        got = smp(logits, p, history, draw)
        if got != want:
            mismatches.append((draw, got, want))
    assert not mismatches


@pytest.mark.parametrize("vocab", [49_152, 50_001, 1000, 70, *MODEL_VOCABS])
def test_multi_block_argmax(cuda_ctx, vocab):
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import ARGMAX_BLOCKS, Ops

    ops, s = Ops(64), drv.Stream()
    part_v, part_i = ga.empty(ARGMAX_BLOCKS, np.float32), ga.empty(ARGMAX_BLOCKS, np.int32)
    counter, out = ga.zeros(1, np.uint32), ga.empty(1, np.int32)
    rng = np.random.default_rng(vocab)
    for trial in range(6):
        if trial % 2:  # few distinct values: ties across blocks, the lowest id must win
            x = rng.integers(-3, 3, vocab).astype(np.float32)
        else:
            x = rng.standard_normal(vocab).astype(np.float32)
        ops.argmax(
            ga.to_gpu(x).gpudata, vocab, part_v.gpudata, part_i.gpudata, counter.gpudata,
            out.gpudata, s,
        )  # fmt: skip
        s.synchronize()
        assert int(out.get()[0]) == int(np.argmax(x))
        assert int(counter.get()[0]) == 0
    # in the decode step the last block also moves the position on (with PDL there)
    pos = ga.to_gpu(np.array([41], np.int32))
    ops.argmax(
        ga.to_gpu(x).gpudata, vocab, part_v.gpudata, part_i.gpudata, counter.gpudata,
        out.gpudata, s, pos=pos.gpudata, advance=1, pdl=True,
    )  # fmt: skip
    s.synchronize()
    assert int(out.get()[0]) == int(np.argmax(x)) and int(pos.get()[0]) == 42


@pytest.mark.parametrize("where", ["first", "last", "middle", "all"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_make_every_sampler_answer_minus_one(smp, cuda_ctx, where, bad):
    """REL-7: any NaN or infinite logit makes sample_greedy, sample_full and argmax_multi write
    -1 (the engine raises NonFiniteLogits), with marks cleared; the host chain raises too."""
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import ARGMAX_BLOCKS, Ops
    from runtime.errors import NonFiniteLogits

    rng = np.random.default_rng(5)
    logits = rng.standard_normal(VOCAB).astype(np.float32)
    index = {"first": [0], "last": [VOCAB - 1], "middle": [VOCAB // 2, 7, 40_000]}
    if where == "all":
        logits[:] = bad
    else:
        logits[index[where]] = bad
    history = [3, 3, VOCAB // 2, 9]
    for p in (PARAMS[0], PARAMS[1], PARAMS[2], PARAMS[6]):
        assert smp(logits, p, history, 0) == -1, p  # smp also checks the marks are cleared
        with pytest.raises(NonFiniteLogits):
            sample_from_logits(logits, p, history, 0)
    ops, s = Ops(64), drv.Stream()
    part_v, part_i = ga.empty(ARGMAX_BLOCKS, np.float32), ga.empty(ARGMAX_BLOCKS, np.int32)
    counter, out = ga.zeros(1, np.uint32), ga.empty(1, np.int32)
    ops.argmax(
        ga.to_gpu(logits).gpudata, VOCAB, part_v.gpudata, part_i.gpudata, counter.gpudata,
        out.gpudata, s,
    )  # fmt: skip
    s.synchronize()
    assert int(out.get()[0]) == -1 and int(counter.get()[0]) == 0


@pytest.mark.parametrize(("vocab", "n_masked"), [(1000, 1), (262_144, 3000), (151_936, 271)])
@pytest.mark.parametrize("pdl", [False, True])
def test_mask_logits(cuda_ctx, vocab, n_masked, pdl):
    """The sampling mask: the chosen ids become -3e38 (finite: the samplers' non-finite flag is
    the model's alone), a non-finite one stays as it was, their old values land in `saved` in
    the ids' order, every other logit is untouched (a guard after the logits too)."""
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import Ops
    from tests.cuda.checks import GUARD, SENTINEL

    ops, s = Ops(64), drv.Stream()
    rng = np.random.default_rng(n_masked)
    x = rng.standard_normal(vocab).astype(np.float32)
    ids = np.sort(rng.choice(vocab, n_masked, replace=False)).astype(np.int32)
    x[ids[-1]] = np.nan  # a masked id the model got wrong: still flagged
    buf = ga.to_gpu(np.concatenate([x, np.full(GUARD, SENTINEL, np.float32)]))
    saved = ga.to_gpu(np.full(n_masked + GUARD, SENTINEL, np.float32))
    ops.mask_logits(buf.gpudata, ga.to_gpu(ids).gpudata, saved.gpudata, n_masked, s, pdl=pdl)
    s.synchronize()
    got, kept = buf.get(), saved.get()
    want = x.copy()
    want[ids[:-1]] = np.float32(-3.0e38)
    np.testing.assert_array_equal(got[:vocab], want)  # (NaN equals NaN here)
    np.testing.assert_array_equal(kept[:n_masked], x[ids])
    assert np.all(got[vocab:] == SENTINEL) and np.all(kept[n_masked:] == SENTINEL)
