"""REL-7: a file that parses but computes NaN is refused at load, naming what is wrong.

Each poison is one the black-box attack loaded as `ready` (it then answered every request with an
empty `end`). The metadata and layout checks run inside open_gguf; the probe after the engine's
load; the scan with --check-tensors. The real models must pass all of them.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest

from runtime.backends import load_engine
from runtime.errors import ErrorCode, ModelLoadError, NonFiniteLogits
from runtime.generate import Finished, TokenOut, generate
from runtime.gguf_file import open_gguf
from runtime.model_checks import check_config, probe_engine, probed, scan_tensors
from runtime.sampling import SamplingParams
from runtime.tokenizer import Tokenizer
from tests.poisoned_gguf import VOCAB, fill_tensor, poison_rows, tiny_model, zero_offsets

EPS, BASE = "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"


def _refusal(path: Path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        open_gguf(path).close()
    assert caught.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert str(path) in caught.value.message
    return caught.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (EPS, float("nan")),
        (EPS, -1e-5),
        (EPS, 0.0),
        (EPS, 0.5),
        (EPS, float("inf")),
        (BASE, 0.0),
        (BASE, -10000.0),
        (BASE, float("nan")),
        (BASE, float("inf")),
        (BASE, 1e-30),
        ("llama.context_length", 1 << 25),
        ("llama.rope.dimension_count", 15),
        ("llama.rope.dimension_count", 32),  # above the head size 16
    ],
)
def test_metadata_out_of_range_is_refused_naming_the_key(tmp_path, key, value):
    message = _refusal(tiny_model(tmp_path / "m.gguf", **{key: value}))
    assert repr(key) in message  # NaN and values <= 0 are refused as they are read


def test_odd_head_size_is_refused_naming_the_key(tmp_path):
    # d_model 288 = 9 whole blocks of 32; 32 heads of 9: the rotary pairs do not fit
    shape = {"llama.embedding_length": 288, "llama.attention.head_count": 32}
    path = tiny_model(tmp_path / "m.gguf", **shape, **{"llama.attention.head_count_kv": 16})
    message = _refusal(path)
    assert "'llama.attention.head_count'" in message and "must be even" in message
    config = open_gguf(tiny_model(tmp_path / "ok.gguf")).config
    check_config(attrs.evolve(config, rope_dim=8))  # a partial rotation is fine


def test_all_tensor_offsets_zero_is_refused_naming_two_tensors(tmp_path):
    message = _refusal(zero_offsets(tiny_model(tmp_path / "m.gguf")))
    assert "overlap" in message and message.count(".weight' (bytes") == 2


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"])
def test_real_models_pass_every_check(name):
    from tests.reference_data import catalog_model_file, real_model_path

    path = real_model_path() if name == "smollm2-135m" else catalog_model_file(name)
    open_gguf(path).close()  # check_model runs inside


def _engine(path: Path, max_context: int = 64):
    model = open_gguf(path)
    try:
        return load_engine(model, "cpu", max_context=max_context)
    finally:
        model.close()


def test_the_probe_refuses_nan_embeddings_and_closes_the_engine(tmp_path):
    path = poison_rows(tiny_model(tmp_path / "m.gguf"), "token_embd.weight", [7])
    engine = _engine(path)  # loads: metadata and layout are fine
    with pytest.raises(ModelLoadError, match="probe forward pass failed") as caught:
        probed(engine)
    assert "NaN or infinite" in caught.value.message
    assert engine.memory_bytes() == 0  # closed


def test_the_probe_passes_a_healthy_model_and_leaves_it_reset(tmp_path):
    engine = _engine(tiny_model(tmp_path / "m.gguf"))
    assert probed(engine) is engine and engine.position(0) == 0
    for room in (1, 2, 4):  # a tiny --max-context still probes what fits
        probe_engine(_engine(tiny_model(tmp_path / f"c{room}.gguf"), max_context=room))


def test_check_tensors_names_the_tensor_holding_nan(tmp_path):
    path = poison_rows(tiny_model(tmp_path / "m.gguf"), "token_embd.weight", [0])
    with open_gguf(path) as model, pytest.raises(ModelLoadError) as caught:
        scan_tensors(model)
    assert "'token_embd.weight'" in caught.value.message and "64 non-finite" in caught.value.message
    with open_gguf(tiny_model(tmp_path / "ok.gguf")) as model:
        scan_tensors(model)  # no error


def test_nan_met_at_run_time_ends_the_job_instead_of_a_silent_eos(tmp_path):
    """An untied model whose embedding row for one token is NaN passes the probe (the probe's
    tokens avoid that row) and serves other prompts; a prompt with that token makes every
    logit NaN. Before: np.argmax(NaN) = token 0 = EOS, an empty answer. Now: NonFiniteLogits."""
    poisoned_token = 3 + ord("q")  # the synthetic vocabulary: 3 specials, then the 256 bytes
    path = tiny_model(tmp_path / "m.gguf", tied=False)
    poison_rows(path, "token_embd.weight", [poisoned_token])
    with open_gguf(path) as model:
        tokenizer = Tokenizer.from_metadata(model.metadata)
    engine = probed(_engine(path))
    assert tokenizer.encode("q") == [poisoned_token]

    def run(prompt: str, params: SamplingParams) -> list:
        return list(
            generate(
                engine,
                tokenizer.encode(prompt),
                params,
                max_tokens=4,
                decoder=tokenizer.incremental_decoder(),
                eog_ids=tokenizer.eog_ids,
            )
        )

    for params in (SamplingParams(temperature=0.0), SamplingParams(seed=1)):
        with pytest.raises(NonFiniteLogits, match="output token 0"):
            run("zq", params)
        events = run("zz", params)  # the same engine goes on serving other prompts
        assert isinstance(events[-1], Finished) and all(
            isinstance(e, TokenOut) for e in events[:-1]
        )
        assert 0 <= events[0].token_id < VOCAB


def test_overflowing_weights_warn_nothing_and_fail_the_probe(tmp_path):
    """Finite but huge norm weights (1e30: --check-tensors finds nothing) overflow float32 in
    the forward pass. numpy used to print 'RuntimeWarning: overflow encountered in multiply'
    to stderr, a line that is not narration JSON (pytest turns warnings into errors here); now
    the numbers go on quietly and the probe refuses the model."""
    path = fill_tensor(tiny_model(tmp_path / "m.gguf"), "blk.0.ffn_norm.weight", 1e30)
    with open_gguf(path) as model:
        scan_tensors(model)  # every value is finite
    engine = _engine(path)
    engine.prefill(0, [1, 2, 3])
    engine.decode([0], [4])
    assert not np.isfinite(engine.logits(0)).any()
    with pytest.raises(ModelLoadError, match="probe forward pass failed"):
        probed(engine)


def test_check_tensors_setting_from_the_flag_and_the_environment():
    from runtime.cli import build_parser, config_from_args
    from runtime.config import WorkerConfig

    assert config_from_args(build_parser().parse_args(["--check-tensors"])).check_tensors
    assert not config_from_args(build_parser().parse_args([])).check_tensors
    for raw, want in (("1", True), ("true", True), ("On", True), ("0", False), ("no", False)):
        assert WorkerConfig.from_env({"WORKER_ORCD_CHECK_TENSORS": raw}).check_tensors is want
    with pytest.raises(ValueError, match="not a boolean"):
        WorkerConfig.from_env({"WORKER_ORCD_CHECK_TENSORS": "maybe"})
