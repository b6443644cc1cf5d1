"""The tiny Phi-3 / GPT-OSS fixtures against transformers' logits, via a plain-numpy forward.

The fixtures (tests/data/reference_models, made by tools/make_reference_fixtures.py) hold
llama.cpp-converted GGUFs and transformers' fp32 logits. `tests/reference_forward.py` computes
the two architectures from the GGUF tensors in float64; matching transformers here shows that
the GGUF holds the model and that the numpy code is the model's math, so the engines can later
be held to it (and to the same logits) position by position. Decision 0013 explains the
tolerances and llama.cpp's differences.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf import quants as gguf_quants

import tests.reference_forward as rf
from runtime import quants
from tests.reference_data import reference_fixture

#: |numpy float64 - transformers fp32| bound on every logit (measured: 9e-5 GPT-OSS, 8e-6 Phi-3;
#: logits reach |13|); what it covers is fp32 rounding in transformers
TOL = 1e-3
#: top-1 must agree wherever the reference's top-2 margin exceeds this
MARGIN = 10 * TOL

FORWARD = {"gpt-oss-tiny": rf.gpt_oss_forward, "phi3-tiny": rf.phi3_forward}


@pytest.fixture(scope="module", params=sorted(FORWARD))
def fixture(request):
    path, manifest, logits = reference_fixture(request.param)
    meta, weights = rf.read_gguf(path)
    return request.param, path, manifest, logits, meta, weights


def test_gguf_is_the_one_the_manifest_describes(fixture):
    name, path, manifest, logits, meta, _ = fixture
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["gguf_sha256"]
    assert meta["general.architecture"] == {"gpt-oss-tiny": "gpt-oss", "phi3-tiny": "phi3"}[name]
    for n, case in enumerate(manifest["prompts"]):
        assert logits[f"prompt{n}"].shape == (len(case["ids"]), manifest["config"]["vocab_size"])


def test_gpt_oss_experts_are_mxfp4_as_in_the_real_files():
    path, _, _ = reference_fixture("gpt-oss-tiny")
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    experts = [n for n in types if "_exps.weight" in n]
    assert len(experts) == 3 * 4
    assert all(types[n] == Q.MXFP4 for n in experts)
    assert types["blk.0.attn_q.weight"] == Q.F16 and types["blk.0.attn_sinks.weight"] == Q.F32


def test_our_mxfp4_decode_of_the_converted_experts_matches_gguf_py():
    for t in GGUFReader(reference_fixture("gpt-oss-tiny")[0]).tensors:
        if t.tensor_type == Q.MXFP4:
            shape = tuple(int(d) for d in reversed(t.shape))  # (experts, rows, cols)
            ours = quants.dequantize(t.data, Q.MXFP4, shape)
            np.testing.assert_array_equal(ours, gguf_quants.dequantize(t.data, Q.MXFP4))


def test_numpy_forward_matches_transformers_logits(fixture):
    name, _, manifest, logits, meta, weights = fixture
    for n, case in enumerate(manifest["prompts"]):
        ours = FORWARD[name](meta, weights, case["ids"])
        theirs = logits[f"prompt{n}"]
        assert np.abs(ours - theirs).max() < TOL, (name, n)
        top2 = np.sort(theirs, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > MARGIN
        assert clear.sum() >= len(case["ids"]) // 2  # the comparison of top-1 means something
        np.testing.assert_array_equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])


@pytest.mark.parametrize(
    "switch",
    [
        {"sinks": False},
        {"sliding_window": False},
        {"clamp": False},
        {"softmax_top_k": False},
        {"yarn_truncate": True},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_each_gpt_oss_feature_is_visible_in_the_fixture(switch):
    """Get any one feature wrong and the logits leave the tolerance: the fixture checks it."""
    path, manifest, logits = reference_fixture("gpt-oss-tiny")
    meta, weights = _gpt_oss_weights()
    worst = max(
        np.abs(rf.gpt_oss_forward(meta, weights, c["ids"], **switch) - logits[f"prompt{n}"]).max()
        for n, c in enumerate(manifest["prompts"])
    )
    assert worst > 10 * TOL


def test_llama_cpp_differs_from_transformers_exactly_as_modelled():
    """llama.cpp on the same GGUF: with YaRN's range rounded and the experts' inputs through
    Q8_0 (ggml-cpu's MXFP4 dot product), our forward gives llama.cpp's logits; without, it
    gives transformers' and misses llama.cpp's by far more than the tolerance."""
    _, manifest, logits = reference_fixture("gpt-oss-tiny")
    meta, weights = _gpt_oss_weights()
    for n, case in enumerate(manifest["prompts"]):
        ids, llama_cpp = case["llama_debug_ids"], logits[f"llama_cpp{n}"]
        as_llama = rf.gpt_oss_forward(meta, weights, ids, yarn_truncate=True, q8_expert_inputs=True)
        assert np.abs(as_llama[-1] - llama_cpp).max() < 1e-4, n
        plain = rf.gpt_oss_forward(meta, weights, ids)[-1]
        assert np.abs(plain - llama_cpp).max() > 10 * TOL, n


def test_phi3_llama_cpp_agrees_with_transformers_closely():
    """llama.cpp computes the Phi-3 fixture like transformers, within its own f16 arithmetic."""
    _, manifest, logits = reference_fixture("phi3-tiny")
    meta, weights = rf.read_gguf(reference_fixture("phi3-tiny")[0])
    for n, case in enumerate(manifest["prompts"]):
        ours = rf.phi3_forward(meta, weights, case["llama_debug_ids"])[-1]
        llama_cpp = logits[f"llama_cpp{n}"]
        assert np.abs(ours - llama_cpp).max() < 5e-3, n
        assert ours.argmax() == llama_cpp.argmax()


_CACHE: dict = {}


def _gpt_oss_weights():
    if "gpt-oss" not in _CACHE:
        _CACHE["gpt-oss"] = rf.read_gguf(reference_fixture("gpt-oss-tiny")[0])
    return _CACHE["gpt-oss"]
