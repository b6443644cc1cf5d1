"""GPT-OSS and Phi-3 on the CUDA engine (the H200), against transformers' logits on the reference
fixtures (tests/data/reference_models; reference_checks.py says what is compared and the bound).

Each fixture loads three ways: CUDA graphs (the service's default), the same fused kernels
eagerly, and the unfused kernels eagerly. All three hold transformers' logits within
LOGIT_RTOL at every position with top-1 equal wherever the margin is clear; the graph replays
the eager launches bit for bit; the load allocates `vram_needed` and passes the residency check.
The same checks run on the simulated GPU in CI (test_engine_sim_reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cuda.one_slot import load_one
from tests.cuda.reference_checks import (
    FIXTURES,
    LAYER_KINDS,
    LOGIT_RTOL,
    errors_against_transformers,
    load_fixture,
)
from tests.reference_data import reference_fixture

OPTIONS = {
    "graph": {},
    "fused_eager": {"use_graph": False},
    "eager": {"use_graph": False, "fuse": False},
}


def _load(model, **kw):
    """The engine on slot 0, through the one-sequence calls these checks are written in."""
    return load_one(model, **kw)


@pytest.fixture(scope="module", params=FIXTURES)
def engines(request, cuda_ctx):
    name = request.param
    out = {label: load_fixture(_load, name, **opts)[0] for label, opts in OPTIONS.items()}
    yield name, out
    for e in out.values():
        e.close()


@pytest.mark.parametrize("label", list(OPTIONS))
def test_engine_matches_transformers(engines, label):
    name, out = engines
    errors, clear = errors_against_transformers(out[label], name)
    print(f"\n{name} {label}: relative logit error vs transformers max {max(errors):.2e} "
          f"mean {np.mean(errors):.2e} over {len(errors)} checks, {clear} top-1 checked")  # fmt: skip
    assert max(errors) < LOGIT_RTOL
    assert clear > 60


def test_graph_replays_the_eager_step_bitwise(engines):
    name, out = engines
    _, manifest, _ = reference_fixture(name)
    ids = manifest["prompts"][1]["ids"]
    graph, eager, unfused = out["graph"], out["fused_eager"], out["eager"]
    for e in (graph, eager, unfused):
        e.reset()
        e.prefill(ids[:3])
    for token in ids[3:]:
        for e in (graph, eager, unfused):
            e.step(token)
        np.testing.assert_array_equal(graph.logits(), eager.logits())
        got, want = unfused.logits().astype(np.float64), graph.logits()
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    c = graph.config
    launches = 1 + len(LAYER_KINDS[name]) * c.n_layers + 2
    assert {g.n_launches for g in graph._graphs.values()} == {launches}


def test_memory_is_the_estimate_and_resident(engines):
    from cuda.engine import vram_needed
    from runtime.gguf_file import open_gguf

    name, out = engines
    e = out["graph"]
    e.reset()
    with open_gguf(reference_fixture(name)[0]) as m:
        needed = vram_needed(m, e.max_context, e.fwd.max_chunk)
    assert e.memory_bytes() == needed  # the sampler workspace too, allocated at load
    report = e.check_residency()
    assert report.ok, report.detail
    if name == "gpt-oss-tiny":
        assert e.quant_kind == "MXFP4"  # general.file_type 38 (llama.cpp: MXFP4_MOE), MOD-24
        assert {"blk.0.ffn_gate_exps", "blk.3.ffn_down_exps"} <= set(e._checksums)
