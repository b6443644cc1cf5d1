"""What CudaEngine.load refuses before touching a GPU: matrices the kernels cannot take and head
sizes the attention kernels do not build for, as ModelLoadError naming the tensor (no GPU here:
the checks run before PyCUDA is imported).

The models are the default model with one thing changed (its config, or one tensor record's
type/shape), since no real file has these defects.
"""

from __future__ import annotations

import types

import attrs
import pytest
from gguf import GGMLQuantizationType as Q

from cuda.engine import CudaEngine
from cuda.quant_ops import QuantKernels
from cuda.weights import check_matrices
from runtime.errors import ModelLoadError
from runtime.gguf_file import open_gguf
from tests.reference_data import real_model_path


@pytest.fixture(scope="module")
def model():
    m = open_gguf(real_model_path())
    yield m
    m.close()


def _variant(model, *, config=None, tensor=None):
    tensors = dict(model.tensors)
    if tensor is not None:
        tensors[tensor.name] = tensor
    return types.SimpleNamespace(
        path=model.path,
        config=config or model.config,
        tensors=tensors,
        quant_kind=model.quant_kind,
        family=model.family,
    )


def test_matrix_problem_per_type_and_width():
    assert QuantKernels.matrix_problem(Q.Q4_1, 576) is None
    assert QuantKernels.matrix_problem(Q.F16, 64) is None
    assert "multiple of 32" in QuantKernels.matrix_problem(Q.F32, 40)  # matmul's tile width
    assert "multiple of 256" in QuantKernels.matrix_problem(Q.Q4_K, 576)
    assert "unsupported type Q2_K" in QuantKernels.matrix_problem(Q.Q2_K, 512)
    assert QuantKernels.matrix_problem(Q.Q8_0, 0) is not None


def test_the_default_model_passes(model):
    check_matrices(model, QuantKernels.matrix_problem)


def test_a_matrix_of_odd_width_is_refused_at_load(model):
    rec = model.weight("ffn_down", 3)
    bad = attrs.evolve(rec, qtype=Q.F32, shape=(rec.shape[0], 40))
    with pytest.raises(ModelLoadError, match=r"blk\.3\.ffn_down\.weight.*multiple of 32"):
        CudaEngine.load(_variant(model, tensor=bad), max_context=64)


def test_an_unsupported_matrix_type_is_refused_at_load(model):
    bad = attrs.evolve(model.weight("attn_q", 0), qtype=Q.Q5_1)
    with pytest.raises(ModelLoadError, match=r"blk\.0\.attn_q\.weight.*Q5_1"):
        CudaEngine.load(_variant(model, tensor=bad), max_context=64)


@pytest.mark.parametrize("head_dim", [48, 288])
def test_an_unsupported_head_dim_is_a_model_load_error(model, head_dim):
    config = attrs.evolve(model.config, head_dim=head_dim, rope_dim=head_dim)
    with pytest.raises(ModelLoadError, match=f"head_dim {head_dim}"):
        CudaEngine.load(_variant(model, config=config), max_context=64)


def test_a_matrix_type_the_kernels_lack_is_refused_at_load(model):
    # the kernels decode the nine types of MOD-5 (MXFP4 included) and nothing else: the load
    # check names the tensor and the type rather than let a kernel meet it
    bad = attrs.evolve(model.weight("ffn_up", 1), qtype=Q.Q5_1)
    with pytest.raises(ModelLoadError, match=r"blk\.1\.ffn_up\.weight.*unsupported type Q5_1"):
        CudaEngine.load(_variant(model, tensor=bad), max_context=64)


def test_a_family_whose_block_is_not_wired_is_refused_before_any_gpu_work(model):
    """A block without a CUDA module (cuda.models.BLOCKS) must not run another block's layer
    sequence on its weights: it is refused naming the backend to use. llama, gemma3, gpt_oss run."""
    from cuda.models import BLOCKS
    from runtime.models import FAMILIES

    assert {f.block for f in FAMILIES.values()} <= set(BLOCKS) == {"llama", "gemma3", "gpt_oss"}
    variant = _variant(model)
    variant.family = attrs.evolve(model.family, block="mamba", name="mamba")
    with pytest.raises(
        ModelLoadError,
        match=r"does not run the mamba block .*\(it runs llama, gemma3, gpt_oss\).*--backend cpu",
    ):
        CudaEngine.load(variant, max_context=64)
