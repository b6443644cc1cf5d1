"""The GPU upload follows the weight plan: checked without a GPU, on all three real models.

A stand-in driver records every allocation and the bytes copied into it. For each model the
allocations must be exactly the layout the CUDA engine expects (one per slot and layer, q|k|v and
gate|up back to back when their types agree, else one per matrix), hold the file's bytes
(matrices raw, vectors as float32), and add up to `weight_bytes`; progress covers every byte the
plan reads. The VRAM estimate imports and runs with PyCUDA unavailable (pool preflight).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from cuda.ledger import Ledger
from cuda.weights import LayerWeights, Segment, file_bytes, upload_weights, weight_bytes
from runtime.gguf_file import open_gguf
from runtime.progress import ProgressReporter
from tests.reference_data import catalog_model_file

MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]


class _Alloc:
    def __init__(self, ptr: int):
        self.ptr = ptr

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        pass


class RecordingDriver:
    """mem_alloc / memcpy_htod / memset_d8 into host bytearrays, keyed by base pointer."""

    class MemoryError(Exception):
        pass

    def __init__(self):
        self.mem: dict[int, bytearray] = {}
        self._next = 1 << 20

    def mem_alloc(self, nbytes: int) -> _Alloc:
        ptr, self._next = self._next, self._next + nbytes + 4096
        self.mem[ptr] = bytearray(nbytes)
        return _Alloc(ptr)

    def memcpy_htod(self, ptr: int, array: np.ndarray) -> None:
        base = max(b for b in self.mem if b <= ptr)
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self.mem[base][ptr - base : ptr - base + data.size] = data.tobytes()

    def memset_d8(self, ptr: int, value: int, nbytes: int) -> None:
        self.mem[ptr][:nbytes] = bytes([value]) * nbytes


def _expected_layer(model, i: int) -> dict[str, list[str]]:
    """LayerWeights field -> the file's tensors behind it, written out by name."""
    b = f"blk.{i}."
    fields = {
        "attn_norm": [b + "attn_norm.weight"],
        "ffn_norm": [b + "ffn_norm.weight"],
        "qkv": [b + f"attn_{x}.weight" for x in "qkv"],
        "attn_output": [b + "attn_output.weight"],
        "gate_up": [b + "ffn_gate.weight", b + "ffn_up.weight"],
        "down": [b + "ffn_down.weight"],
    }
    if b + "attn_q.bias" in model.tensors:
        fields["qkv_bias"] = [b + f"attn_{x}.bias" for x in "qkv"]
    if b + "attn_q_norm.weight" in model.tensors:
        fields |= {
            "q_norm": [b + "attn_q_norm.weight"],
            "k_norm": [b + "attn_k_norm.weight"],
            "post_attn_norm": [b + "post_attention_norm.weight"],
            "post_ffn_norm": [b + "post_ffw_norm.weight"],
        }
    return fields


#: allocation name of each LayerWeights field (matrices of mixed types go by tensor name)
ALLOC = {
    "attn_norm": "blk.{i}.attn_norm",
    "ffn_norm": "blk.{i}.ffn_norm",
    "qkv": "blk.{i}.attn_qkv",
    "qkv_bias": "blk.{i}.attn_qkv_bias",
    "attn_output": "blk.{i}.attn_output",
    "gate_up": "blk.{i}.ffn_gate_up",
    "down": "blk.{i}.ffn_down",
    "q_norm": "blk.{i}.attn_q_norm",
    "k_norm": "blk.{i}.attn_k_norm",
    "post_attn_norm": "blk.{i}.post_attention_norm",
    "post_ffn_norm": "blk.{i}.post_ffw_norm",
}
VECTORS = {
    "attn_norm",
    "ffn_norm",
    "qkv_bias",
    "q_norm",
    "k_norm",
    "post_attn_norm",
    "post_ffn_norm",
}


def _f32(model, names: list[str]) -> bytes:
    return b"".join(model.tensors[n].dequantize().astype("<f4").tobytes() for n in names)


@pytest.mark.parametrize("name", MODELS)
def test_upload_follows_the_plan_and_weight_bytes_matches(name):
    path = catalog_model_file(name)
    with open_gguf(path) as model:
        drv, progress = RecordingDriver(), []
        ledger = Ledger(drv)
        total = file_bytes(model)
        reporter = ProgressReporter(total, lambda d, t: progress.append(d))
        weights, checksums = upload_weights(drv, model, ledger, reporter, lambda q, c: None)
        reporter.finish()
        assert total == model.total_tensor_bytes  # every tensor of these files is used
        assert progress[-1] == total
        assert ledger.total() == weight_bytes(model)
        assert set(checksums) == {e.name for e in ledger.entries()}

        def raw(seg: Segment) -> bytes:
            return bytes(drv.mem[seg.ptr])

        embd = model.tensors["token_embd.weight"]
        assert raw(weights.token_embd) == embd.raw.tobytes()
        assert (weights.token_embd.rows, weights.token_embd.cols) == embd.shape
        if model.config.tied_output:
            assert weights.output is weights.token_embd
        else:
            assert raw(weights.output) == model.tensors["output.weight"].raw.tobytes()
        assert bytes(drv.mem[weights.output_norm]) == _f32(model, ["output_norm.weight"])
        assert len(weights.layers) == model.config.n_layers
        names = ["token_embd", "output_norm"] + ([] if model.config.tied_output else ["output"])
        for i, lw in enumerate(weights.layers):
            expected = _expected_layer(model, i)
            for field in LayerWeights.__attrs_attrs__:
                value = getattr(lw, field.name)
                if field.name not in expected:
                    assert value is None, (name, i, field.name)
                    continue
                tensors = [model.tensors[n] for n in expected[field.name]]
                if isinstance(value, int):  # a vector: float32, parts back to back
                    assert bytes(drv.mem[value]) == _f32(model, expected[field.name])
                    continue
                segs = value if isinstance(value, tuple) else (value,)
                alloc = ALLOC[field.name].format(i=i)
                if len({t.qtype for t in tensors}) == 1:  # one allocation for the group
                    (seg,) = segs
                    assert raw(seg) == b"".join(t.raw.tobytes() for t in tensors)
                    assert seg.rows == sum(t.shape[0] for t in tensors) and seg.row0 == 0
                    assert seg.qtype == tensors[0].qtype
                    names.append(alloc)
                else:  # mixed types: one segment per matrix, rows in order
                    assert [raw(s) for s in segs] == [t.raw.tobytes() for t in tensors]
                    assert [s.qtype for s in segs] == [t.qtype for t in tensors]
                    rows = [t.shape[0] for t in tensors]
                    assert [s.row0 for s in segs] == [sum(rows[:k]) for k in range(len(rows))]
                    names += [t.name for t in tensors]
            names += [ALLOC[f].format(i=i) for f in expected if f in VECTORS]
        # the ledger holds exactly these allocations: the layout the engine had before the seam
        assert sorted(e.name for e in ledger.entries()) == sorted(names)
        if name == "qwen2.5-coder-0.5b":  # q|k|v of layer 0 is Q5_0, Q5_0, Q8_0: three segments
            assert [s.qtype for s in weights.layers[0].qkv] == [Q.Q5_0, Q.Q5_0, Q.Q8_0]
            assert ledger.has("blk.0.attn_v.weight") and ledger.has("blk.2.attn_qkv")
            assert ledger.has("blk.0.attn_qkv_bias")


def test_vram_estimate_needs_no_pycuda():
    paths = [str(catalog_model_file(n)) for n in MODELS]
    code = (
        "import sys; sys.modules['pycuda'] = None; sys.modules['pycuda.driver'] = None\n"
        "from cuda.estimate import vram_needed\n"
        "from runtime.gguf_file import open_gguf\n"
        f"for p in {paths!r}:\n"
        "    with open_gguf(p) as m: print(vram_needed(m, 2048))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    from cuda.engine import vram_needed as engine_vram_needed
    from cuda.estimate import vram_needed
    from cuda.forward import buffer_bytes

    assert engine_vram_needed is vram_needed
    for path, printed in zip(paths, out, strict=True):
        with open_gguf(path) as model:
            needed = vram_needed(model, 2048)
            assert int(printed) == needed
            assert needed > weight_bytes(model) + buffer_bytes(model.config, 2048, 512)
