"""The CUDA engine's Python on the simulated GPU (tests/cuda/sim_gpu.py): no GPU needed.

The launchers, the forward pass, each family's block, the sampler, the graphs and the VRAM
accounting run unchanged; only the kernels are numpy (their contracts; the GPU tests check the
kernels themselves). What is checked here:
- SmolLM2's and qwen2's launches are main's (commit 215c734), launch for launch and argument for
  argument, for the fused and unfused decode graphs and for a two-chunk prefill
  (tests/data/cuda_launches/main-215c734.json, recorded on the same stand-in before this
  branch's change; kernel variants are compared by kind, the matvec table being another
  branch's to change);
- the decode step's launch sequence of each family, and gemma3's per-layer values in it (window,
  rotary table, q/k norms, scale);
- gemma3 on the engine computes the numpy engine's function: logits within 3e-3 (fp16 KV cache
  and fp16-rounded prefill products, as on the GPU), with a 16-token window crossed by the prompt
  and by prefill chunks, a global layer, graph vs eager, prefill-then-decode vs one pass;
- the sampling mask: a suffix of unsampleable ids shortens the argmax and the sampler, other ids
  are set to -inf after the head; either way the banned id that has the largest logit is never
  picked, and `logits()` stays unmasked;
- VRAM: what the load allocates is `vram_needed`, on the three real files where present; the
  residency check covers the rotary tables and the new norm weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine
from tests.cuda.engine_checks import (
    SYNTHETIC_TOL,
    banning_file,
    check_a_nan_slot_on_a_poisoned_file,
    check_banned_never_sampled,
    check_batch_invariance,
    check_slots_match_numpy,
    compare_with_numpy,
    gemma3_file,
    rel,
    whole_and_split,
)
from tests.cuda.one_slot import load_one, one_slot
from tests.cuda.sim_gpu import kernel_kind, simulated_gpu
from tests.reference_data import catalog_model_file
from tools.make_synthetic_gguf import write_synthetic_model

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "cuda_launches" / "main-215c734.json"


@pytest.fixture
def sim(monkeypatch):
    return simulated_gpu(monkeypatch)


@pytest.fixture(scope="module")
def sim_module():
    with pytest.MonkeyPatch.context() as mp:
        yield simulated_gpu(mp)


def _load(model, **kw):
    return load_one(model, **kw)


# -- SmolLM2 and qwen2 launch what main launched -------------------------------------------------


def record_launches(sim, family: str, path: Path) -> dict:
    """Decode graphs (fused and unfused) and a two-chunk prefill, as the golden file was made:
    2 layers, seed 3, vocabulary 1200, context 128, chunks of 48, prompt ids 5..59."""
    write_synthetic_model(
        path,
        n_layers=2,
        seed=3,
        vocab_size=1200,
        **({} if family == "smollm2" else {"family": family}),
    )
    runs = {}
    with open_gguf(path) as m:
        for label, opts in {"fused": {}, "unfused": {"fuse": False}}.items():
            e = _load(m, max_context=128, max_chunk=48, **opts)
            runs[label] = {
                f"decode/{splits}": [ln.describe(e.ledger) for ln in g.trace]
                for (_slot, splits), g in e._graphs.items()
            }
            first = len(sim.trace)
            e.prefill(list(range(5, 60)))
            runs[label]["prefill"] = [ln.describe(e.ledger) for ln in sim.trace[first:]]
            e.close()
    return runs


def _by_kind(rows: list) -> list:
    return [[kernel_kind(name), args] for name, _grid, args in rows]


@pytest.mark.parametrize("family", ["smollm2", "qwen2"])
def test_smollm2_and_qwen2_launch_what_main_launched(sim, family, tmp_path):
    golden = json.loads(GOLDEN.read_text())[family]
    got = record_launches(sim, family, tmp_path / f"{family}.gguf")
    assert got.keys() == golden.keys()
    for label in golden:
        assert got[label].keys() == golden[label].keys()
        for part, rows in golden[label].items():
            want, have = _by_kind(rows), _by_kind(got[label][part])
            for j, (w, h) in enumerate(zip(want, have, strict=False)):
                assert h == w, f"{family} {label} {part} launch {j}: {h} != main's {w}"
            assert len(have) == len(want), (family, label, part)


# -- the decode step of each family --------------------------------------------------------------

LLAMA_LAYER = ["matvec_norm", "attn_decode_rope", "matvec", "matvec_norm_swiglu", "matvec"]
QWEN2_LAYER = ["matvec_seg_norm", *LLAMA_LAYER[1:]]
GEMMA3_LAYER = ["attn_decode_rope", "matvec", "add_rms_norm", "matvec_norm_geglu", "matvec",
                "add_rms_norm"]  # fmt: skip


@pytest.mark.parametrize(
    ("family", "layer", "mixed"),
    [("smollm2", LLAMA_LAYER, ()), ("qwen2", QWEN2_LAYER, ()), ("gemma3", GEMMA3_LAYER, (0, 1, 4))],
)
def test_decode_step_launches_per_family(sim, tmp_path, family, layer, mixed):
    """embedding, the block's launches per layer, head, argmax: decision 0012's counts (5 per
    llama / qwen2 layer, 7 per gemma3 layer); gemma3's q|k|v is one segmented launch where v has
    another type than q and k (layers 0, 1, 4 of the real file) and the plain fused one elsewhere."""
    n_layers = 6
    kw = {} if family == "smollm2" else {"family": family}
    path = write_synthetic_model(tmp_path / "m.gguf", n_layers=n_layers, vocab_size=1300, **kw)
    with open_gguf(path) as m:
        e = _load(m, max_context=256)
        kinds = [kernel_kind(ln.name) for ln in e._graphs[0, 2].trace]
        expected = ["embed"]
        for i in range(n_layers):
            if family == "gemma3":
                expected += ["matvec_seg_norm" if i in mixed else "matvec_norm", *layer]
            else:
                expected += layer
        assert kinds == [*expected, "matvec_norm", "argmax_multi"]
        assert {g.n_launches for g in e._graphs.values()} == {len(kinds)}
        e.close()


def test_gemma3_decode_reads_each_layers_values(sim, tmp_path):
    """Layer i slides iff i % 6 < 5: window 16 and the base-10,000 table (rope.0); layer 5 sees
    everything with the rope.freq_base table (rope.1); every layer norms q and k with its own
    weights and scales scores by 1/sqrt(256); the embedding is scaled by sqrt(640)."""
    with open_gguf(gemma3_file(tmp_path / "g.gguf")) as m:
        assert m.config.rope_bases == (10000.0, 1000000.0)
        e = _load(m, max_context=256)
        rows = [ln.describe(e.ledger) for ln in e._graphs[0, 1].trace]
        e.close()
    embed = rows[0]
    assert embed[0] == "embed_q8_0" and math.isclose(embed[2][4], math.sqrt(640), rel_tol=1e-6)
    attn = [args for name, _, args in rows if name == "attn_decode_rope"]
    assert len(attn) == 7
    for i, args in enumerate(attn):
        sliding = i % 6 < 5
        assert args[7:9] == [f"rope.{0 if sliding else 1}.{t}+0" for t in ("cos", "sin")], i
        assert args[9:11] == [f"blk.{i}.attn_q_norm+0", f"blk.{i}.attn_k_norm+0"]
        assert args[12:15] == [4, 1, 256]  # heads, kv heads, context
        assert args[15:17] == [128, 1]  # rope_half, neox
        assert args[17] == 1 / 16 and args[18] == (16 if sliding else 0)
        assert args[1] == f"kv.k+{i * 256 * 256 * 2}"
    post = [args for name, _, args in rows if name == "add_rms_norm"]
    assert [a[1] for a in post[:2]] == ["blk.0.post_attention_norm+0", "blk.0.post_ffw_norm+0"]
    assert all(a[0] == "act.xn+0" and a[2] == "act.x+0" and a[4] == 0 for a in post)


# -- gemma3 computes the numpy engine's function -------------------------------------------------


@pytest.fixture(scope="module")
def gemma3(sim_module, tmp_path_factory):
    path = gemma3_file(tmp_path_factory.mktemp("g") / "gemma3.gguf")
    m = open_gguf(path)
    engines = {
        "graph": _load(m, max_context=128, max_chunk=16),
        "fused_eager": _load(m, max_context=128, max_chunk=16, use_graph=False),
        "eager": _load(m, max_context=128, max_chunk=16, use_graph=False, fuse=False),
        "one_chunk": _load(m, max_context=128, use_graph=False),
    }
    yield m, engines, one_slot(NumpyEngine.load(m, max_context=128))
    for e in engines.values():
        e.close()
    m.close()


def test_gemma3_matches_the_numpy_engine(gemma3):
    """A 40-token prompt (past the 16-token window; chunks of 16, or one pass for "one_chunk")
    then 30 decode steps: every engine within SYNTHETIC_TOL of numpy at every step."""
    m, engines, ref = gemma3
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, m.config.vocab_size, 40)
    worst = compare_with_numpy(engines, ref, prompt, rng.integers(0, m.config.vocab_size, 30))
    print(f"gemma3 on the simulated GPU: worst relative logit error vs numpy {worst}")
    assert max(worst.values()) < SYNTHETIC_TOL


def test_gemma3_prefill_then_decode_is_one_pass(gemma3):
    m, engines, _ = gemma3
    prompt = np.random.default_rng(4).integers(0, m.config.vocab_size, 24)
    whole, split = whole_and_split(engines["one_chunk"], prompt, 20, decode_rest=True)
    assert rel(split, whole) < SYNTHETIC_TOL  # decode's products fp32, prefill's fp16


# -- the sampling mask ---------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "suffix"), [("qwen2", True), ("gemma3", False)])
def test_a_banned_id_is_never_sampled_even_when_largest(sim, tmp_path, family, suffix):
    check_banned_never_sampled(_load, tmp_path, family, suffix)


def test_the_scattered_mask_is_one_launch_in_the_graph(sim, tmp_path):
    with open_gguf(banning_file(tmp_path / "m.gguf", "gemma3", [4, 700], 1300)) as m:
        e = _load(m, max_context=64)
        kinds = [kernel_kind(ln.name) for ln in e._graphs[0, 1].trace]
        assert kinds[-3:] == ["matvec_norm", "mask_logits", "argmax_multi"]
        e.close()


def test_a_vocabulary_without_any_sampleable_id_is_refused(sim, tmp_path):
    path = banning_file(tmp_path / "none.gguf", "qwen2", range(300), 300)
    with open_gguf(path) as m, pytest.raises(ModelLoadError, match="none of the 300 logits"):
        _load(m, max_context=64)


# -- VRAM and residency --------------------------------------------------------------------------


def _accounting(e, model, *, run: bool = True) -> None:
    """All of `vram_needed` at load (the sampler's workspace too), and nothing more in a job."""
    from cuda.engine import vram_needed

    e.reset()
    needed = vram_needed(model, e.max_context, max_batch=e.max_batch)
    assert e.memory_bytes() == needed
    if run:  # (a forward pass of a real file is slow in numpy)
        e.prefill([1, 2, 3])
        assert e.memory_bytes() == needed


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"])
def test_real_files_allocate_what_the_estimate_says(sim, name):
    """The load of each real file allocates `vram_needed` (the sampler's workspace included),
    the buffer table has gemma3's two rotary tables and q_dim-wide attention output, and
    Qwen2.5's 271 padding rows are cut off the sampled range."""
    with open_gguf(catalog_model_file(name)) as m:
        e = _load(m, max_context=1024, max_batch=3, use_graph=False)
        c, shapes = m.config, {x.name: x.nbytes for x in e.ledger.entries()}
        assert shapes["act.attn"] == 4 * 512 * c.q_dim
        # 3 slots and the batched step's padding slot (cuda/forward_rows.py)
        assert shapes["kv.k"] == 2 * (3 + 1) * c.n_layers * c.n_kv_heads * 1024 * c.head_dim
        tables = sorted(n for n in shapes if n.startswith("rope."))
        assert len(tables) == 2 * len(c.rope_bases)
        assert e.sampler.vocab == {"qwen2.5-coder-0.5b": 151665}.get(name, c.vocab_size)
        if name == "gemma3-270m":
            assert c.rope_bases == (10000.0, 1000000.0) and c.q_dim == 1024 != c.d_model
        _accounting(e, m, run=False)
        assert e.check_residency().ok
        e.close()
        assert e.memory_bytes() == 0


def test_residency_covers_the_rotary_tables_and_the_new_norms(sim, tmp_path):
    from cuda import residency

    with open_gguf(gemma3_file(tmp_path / "g.gguf", n_layers=6)) as m:
        e = _load(m, max_context=512)
        _accounting(e, m)
        report = e.check_residency()
        assert report.ok, report.detail
        for name in ("rope.1.sin", "blk.3.attn_q_norm", "blk.5.post_ffw_norm"):
            entry = next(x for x in e.ledger.entries() if x.name == name)
            off, _ = residency.window(entry.nbytes)
            word = sim.mem.array(entry.ptr + off, np.uint8, 4)
            saved = word.copy()
            word ^= np.uint8(0x10)
            bad = e.check_residency()
            assert not bad.ok and name in bad.detail, bad.detail
            word[:] = saved
        assert e.check_residency().ok
        e.close()


def test_a_block_the_cuda_engine_lacks_is_a_model_load_error(sim, tmp_path):
    import attrs

    with open_gguf(gemma3_file(tmp_path / "g.gguf", n_layers=1)) as m:
        m.family = attrs.evolve(m.family, block="mamba")
        with pytest.raises(ModelLoadError, match="does not run the mamba block"):
            _load(m, max_context=64)


# -- slots: batch invariance ---------------------------------------------------------------------


#: SmolLM2's layout at small shapes (head_dim 64), so 64 slots decode quickly in numpy; qwen2
#: and gemma3 keep their real shapes (the synthetic file fixes them, and numpy is slow at
#: them): 8 slots there (the GPU test runs all three families with 64)
SMALL_LLAMA = {"llama.embedding_length": 128, "llama.feed_forward_length": 256,
               "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1}  # fmt: skip


@pytest.mark.parametrize("family", ["smollm2", "qwen2", "gemma3"])
def test_a_job_gives_the_same_tokens_alone_and_beside_7_or_63_others(sim, tmp_path, family):
    """Batch invariance (issue 13): engine_checks.check_batch_invariance (alone, beside 7,
    beside 63 (7 for qwen2 and gemma3), joining late; greedy and temperature 0.8); slots
    decoded together each give the numpy engine's logits and greedy tokens."""
    from cuda.engine import CudaEngine
    from cuda.forward_rows import buckets

    path = tmp_path / f"{family}.gguf"
    if family == "gemma3":
        gemma3_file(path, n_layers=1, vocab_size=300)
    elif family == "qwen2":
        write_synthetic_model(path, family=family, n_layers=1, vocab_size=300, seed=5)
    else:
        write_synthetic_model(path, n_layers=2, vocab_size=300, seed=5, metadata=SMALL_LLAMA)
    slots, n_tokens = (64, 6) if family == "smollm2" else (8, 3)
    with open_gguf(path) as m:
        e = CudaEngine.load(m, max_context=48, max_chunk=16, max_batch=slots)
        try:  # splits 1 and 2 per slot
            # at load: slot 0's single-step graphs; another slot's at its first step alone
            assert e.max_batch == slots and set(e._graphs) == {(0, 1), (0, 2)}
            # several slots decode as one batched step, a graph per bucket and split level
            assert e.batched and set(e._row_graphs) == {(k, n) for k in buckets(slots)
                                                        for n in (1, 2)}  # fmt: skip
            check_batch_invariance(e, m.config.vocab_size, n_tokens=n_tokens, crowd=slots - 1)
            check_slots_match_numpy(e, one_slot(NumpyEngine.load(m, max_context=48)))
            alone = max(s for s, _ in e._graphs)  # a slot that decoded alone: captured then
            assert alone > 0 and e._graphs[alone, 1].n_launches == e._graphs[0, 1].n_launches
        finally:
            e.close()


def test_a_nan_slot_gets_non_finite_and_its_neighbour_its_own_tokens(sim, tmp_path):
    check_a_nan_slot_on_a_poisoned_file(tmp_path, vocab_size=300, metadata=SMALL_LLAMA)
