"""GPT-OSS and Phi-3 on the CUDA engine's Python, on the simulated GPU (tests/cuda/sim_gpu.py and
sim_moe.py: the kernels' numpy contracts), against transformers' logits (reference_checks.py).

Also: the decode step's launches (7 per gpt-oss layer, 5 per phi3 layer) and the values each
gpt-oss layer passes (its window, its sinks, the score scale, the expert stacks and biases), the
VRAM the load allocates (`vram_needed`, with the MoE buffers and the raw expert stacks), the
residency check covering the experts, and the load-time refusals of MoE shapes the kernels lack.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest

from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf
from tests.cuda.one_slot import load_one
from tests.cuda.reference_checks import (
    FIXTURES,
    LAYER_KINDS,
    LOGIT_RTOL,
    errors_against_transformers,
    load_fixture,
)
from tests.cuda.sim_gpu import kernel_kind, simulated_gpu
from tests.reference_data import reference_fixture


@pytest.fixture
def sim(monkeypatch):
    return simulated_gpu(monkeypatch)


def _load(model, **kw):
    """The engine on slot 0, through the one-sequence calls these checks are written in."""
    return load_one(model, **kw)


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("options", [{}, {"use_graph": False, "fuse": False}])
def test_fixture_matches_transformers_on_the_simulated_gpu(sim, name, options):
    engine, _ = load_fixture(_load, name, **options)
    errors, clear = errors_against_transformers(engine, name)
    engine.close()
    print(f"{name} {options}: worst relative logit error vs transformers {max(errors):.2e}")
    assert max(errors) < LOGIT_RTOL / 2  # measured 4.1e-3 (gpt-oss), 4.5e-4 (phi3)
    assert clear > 60


@pytest.mark.parametrize("name", FIXTURES)
def test_decode_step_launches(sim, name):
    engine, c = load_fixture(_load, name)
    kinds = [kernel_kind(ln.name) for ln in engine._graphs[0, 1].trace]  # slot 0, one split
    assert kinds == ["embed", *LAYER_KINDS[name] * c.n_layers, "matvec_norm", "argmax_multi"]
    assert {g.n_launches for g in engine._graphs.values()} == {len(kinds)}
    engine.close()


def test_gpt_oss_layers_pass_their_own_values(sim):
    """Layer i's window (4 on even layers, 0 on odd), sinks, the 1/8 scale, the YaRN table, q|k|v
    and router biases fused in, the experts' stacks, biases and the clamp constants."""
    engine, c = load_fixture(_load, "gpt-oss-tiny")
    rows = [ln.describe(engine.ledger) for ln in engine._graphs[0, 1].trace]  # slot 0, one split
    engine.close()
    attn = [args for name, _, args in rows if name == "attn_decode_rope_sinks"]
    for i, args in enumerate(attn):
        assert args[7:9] == ["rope.0.cos+0", "rope.0.sin+0"]
        assert args[17] == 0.125 and args[18] == (4 if i % 2 == 0 else 0)
        assert args[19] == f"blk.{i}.attn_sinks+0"
    segs = [args for name, _, args in rows if name.startswith(("matvec_seg", "mvx_seg"))]
    assert [a[5] for a in segs[:3]] == ["blk.0.attn_qkv_bias+0", "blk.0.attn_output_bias+0",
                                        "blk.0.router_bias+0"]  # fmt: skip
    gate_up = [args for name, _, args in rows if name.startswith("moe_gate_up_norm")]
    assert gate_up[1][:4] == ["blk.1.ffn_gate_exps+0", "blk.1.ffn_up_exps+0",
                              "blk.1.gate_exps_bias+0", "blk.1.up_exps_bias+0"]  # fmt: skip
    assert gate_up[1][7] == "blk.1.ffn_norm+0" and gate_up[1][11:13] == [
        pytest.approx(1.702), 7.0]  # fmt: skip
    down = [args for name, _, args in rows if name.startswith("moe_down")]
    assert down[3][:2] == ["blk.3.ffn_down_exps+0", "blk.3.down_exps_bias+0"]
    assert down[3][8] == "act.x+0" and down[3][9] == 1  # accumulated into the residual
    assert all(name.endswith("mxfp4") for name, _, _ in rows if name.startswith("moe_down"))
    assert c.rope_yarn is not None


def test_vram_is_the_estimate_and_residency_covers_the_experts(sim):
    from cuda import residency
    from cuda.engine import vram_needed

    path, _, _ = reference_fixture("gpt-oss-tiny")
    with open_gguf(path) as m:
        e = _load(m, max_context=64, max_chunk=8)
        e.reset()
        assert e.memory_bytes() == vram_needed(m, 64, 8)  # the sampler workspace too, at load
        entries = {x.name: x for x in e.ledger.entries()}
        down = m.tensors["blk.2.ffn_down_exps.weight"]
        assert entries["blk.2.ffn_down_exps"].nbytes == down.nbytes  # raw MXFP4, not decoded
        assert entries["moe.h"].nbytes == 4 * 8 * 4 * 64 and "act.gate_up" not in entries
        assert e.check_residency().ok
        entry = entries["blk.2.ffn_down_exps"]
        off, _ = residency.window(entry.nbytes)
        word = sim.mem.array(entry.ptr + off, np.uint8, 4)
        word ^= np.uint8(0x10)
        bad = e.check_residency()
        assert not bad.ok and "blk.2.ffn_down_exps" in bad.detail, bad.detail
        e.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda moe: attrs.evolve(moe, top_k=9, n_experts=300), "at most 256 experts and top-8"),
    ],
)
def test_moe_shapes_the_kernels_lack_are_refused_at_load(sim, change, message):
    path, _, _ = reference_fixture("gpt-oss-tiny")
    with open_gguf(path) as m:
        m.config = attrs.evolve(m.config, moe=change(m.config.moe))
        with pytest.raises(ModelLoadError, match=message):
            _load(m, max_context=64)


def test_the_gpt_oss_bench_runs_on_the_simulated_gpu(sim, tmp_path, capsys):
    """bench/bench_gpt_oss.py end to end on the fixture (the GPU run has one try): load, VRAM
    against the envelope, /health's fields, decode; a llama-bench that is absent is reported."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import bench_gpt_oss
    finally:
        sys.path.pop(0)
    path, _, _ = reference_fixture("gpt-oss-tiny")
    out = tmp_path / "r.json"
    argv = ["--model", str(path), "--ctx", "64", "--prompt", "12", "--steps", "6",
            "--llama-bench", str(tmp_path / "none"), "--json", str(out)]  # fmt: skip
    assert bench_gpt_oss.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["health"]["quant_kind"] == "MXFP4" and res["health"]["resident"]
    assert res["load"]["vram_bytes_used"] > 0 and not res["load"]["in_w1823_band"]
    assert res["decode"]["steps"] == 6 and res["decode"]["decode_tokens_per_s"] > 0
    assert "FileNotFoundError" in res["llama_cpp"]["error"]
    assert "health:" in capsys.readouterr().out
