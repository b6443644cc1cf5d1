"""The gpt-oss decode step on the GPU (cuda/gpt_oss_decode.py: the gpt_oss block's launch
sequence) on the tiny reference fixture, one token at a time, against transformers' logits and
the numpy engine's (tests/data/reference_models, decision 0013).

Every position of the three prompts: the fixture's sinks, sliding window (4, so it bites), YaRN
rope, top-4 of 8 MXFP4 experts with the clamp, biases. The GPU keeps K/V in fp16, so the bound
is a relative L2 error of the logit vector (as test_vs_reference.py: 1e-2 covers fp16 rounding,
a kernel fault gives 0.1 .. 1) and top-1 equality wherever transformers' margin exceeds 0.05
(every position of these prompts: their smallest margin is 0.07). Also: the step captured as a
CUDA graph and replayed gives the eager step's logits, the argmax advanced the position.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cuda.checks import rel
from tests.reference_data import reference_fixture

LOGIT_RTOL = 1e-2
NEAR_TIE = 0.05


@pytest.fixture(scope="module")
def decode(cuda_ctx):
    from cuda.gpt_oss_decode import GptOssDecode
    from runtime.gguf_file import open_gguf

    with open_gguf(reference_fixture("gpt-oss-tiny")[0]) as model:
        step = GptOssDecode(model, max_context=64)
    yield step
    step.close()


@pytest.fixture(scope="module")
def numpy_engine():
    from runtime.gguf_file import open_gguf
    from runtime.numpy_engine import NumpyEngine

    with open_gguf(reference_fixture("gpt-oss-tiny")[0]) as model:
        return NumpyEngine.load(model, max_context=64)


@pytest.mark.parametrize("prompt", [0, 1, 2])
def test_decode_steps_match_transformers_and_the_numpy_engine(decode, numpy_engine, prompt):
    _, manifest, logits = reference_fixture("gpt-oss-tiny")
    ids = manifest["prompts"][prompt]["ids"]
    theirs = logits[f"prompt{prompt}"]
    numpy_engine.reset()
    ours_np = numpy_engine.prefill_all_logits(ids)
    decode.reset()
    for t, token in enumerate(ids):
        got = decode.step(token)
        assert rel(got, theirs[t]) < LOGIT_RTOL, (prompt, t, rel(got, theirs[t]))
        assert rel(got, ours_np[t]) < LOGIT_RTOL, (prompt, t)
        top2 = np.sort(theirs[t])[-2:]
        if top2[1] - top2[0] > NEAR_TIE:
            assert got.argmax() == theirs[t].argmax(), (prompt, t)


def test_a_captured_step_replays_the_eager_one(decode):
    import pycuda.driver as drv

    from cuda.graph import capture

    _, manifest, _ = reference_fixture("gpt-oss-tiny")
    ids = manifest["prompts"][1]["ids"][:6]
    decode.reset()
    eager = [decode.step(t) for t in ids]
    decode.reset()
    for t in ids[:-1]:
        decode.step(t)
    drv.memcpy_htod(decode.token, np.array([ids[-1]], np.int32))
    graph = capture(decode.stream, decode.enqueue)
    try:
        graph.launch()
        decode.stream.synchronize()
    finally:
        graph.close()
    replayed = np.empty_like(eager[-1])
    drv.memcpy_dtoh(replayed, decode.logits)
    pos = np.empty(1, np.int32)
    drv.memcpy_dtoh(pos, decode.pos)
    assert pos[0] == len(ids)  # the argmax advanced it
    np.testing.assert_array_equal(replayed, eager[-1])  # the same launches, the same sums
