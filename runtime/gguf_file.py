"""Open, validate and memory-map a GGUF model file.

`open_gguf(path)` checks everything a loader could trip over later (header, tensor table, types,
bounds, the family's metadata and its weight plan: every tensor with its shape and type, no
tensor the plan does not use) and turns every problem into a `ModelLoadError` that names the
file, the key or tensor, and what was expected. Tensor bytes stay memory-mapped: nothing is read
until a backend dequantizes or uploads it. Engines follow `GGUFModel.plan` (the slots this file
has) and `GGUFModel.config`; they never look for tensors themselves.

Shapes are numpy order: GGUF lists dimensions fastest-first, so a matrix stored as
[in_features, out_features] is reported as (out_features, in_features) = (rows, cols).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from runtime import quants
from runtime.errors import ModelLoadError
from runtime.gguf_header import read_header
from runtime.model_checks import check_model
from runtime.model_config import ModelConfig
from runtime.models import Family, get_family
from runtime.models.plan import BoundPlan, Slot

#: The spec's own names where they differ from llama.cpp's: /health's `quant_kind` is one of
#: "MXFP4" | "Q4_K_M" | "Q4_0" (M0-W-1320), and the GPT-OSS-20B bring-up test (W-1823) expects
#: "MXFP4" for the file llama.cpp calls MOSTLY_MXFP4_MOE (its experts MXFP4, the rest Q8_0/F32).
_SPEC_NAMES = {LlamaFileType.MOSTLY_MXFP4_MOE: "MXFP4"}
#: `general.file_type` -> its name ("MOSTLY_Q4_K_M" -> llama.cpp's "Q4_K_M"; `_SPEC_NAMES` first)
_FILE_TYPES = {
    t.value: _SPEC_NAMES.get(t, t.name.removeprefix("MOSTLY_").removeprefix("ALL_"))
    for t in LlamaFileType
    if t.name != "GUESSED"
}


@attrs.frozen
class TensorRecord:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: (rows, cols) for a matrix
    raw: np.ndarray = attrs.field(eq=False, repr=False)  # uint8, (rows, row_bytes) or (nbytes,)
    offset: int = 0  # absolute byte offset of the data in the file

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def dequantize(self, out: np.ndarray | None = None) -> np.ndarray:
        """float32 array of `.shape`: a fresh copy (not memory-mapped), or written into `out`
        (contiguous float32 of as many values)."""
        return quants.dequantize(self.raw, self.qtype, self.shape, out)


class GGUFModel:
    """A validated, memory-mapped GGUF model. Use `open_gguf`; call `close()` when done."""

    def __init__(
        self,
        path: Path,
        data: np.memmap | None,
        metadata: dict[str, Any],
        tensors: dict[str, TensorRecord],
        family: Family,
        config: ModelConfig,
        plan: BoundPlan,
    ):
        self.path = path
        self._data = data
        self.metadata = metadata
        self.tensors = tensors
        self.family = family
        self.config = config
        self.plan = plan  # the family's slots this file has

    def _name(self, role: str, layer: int | None) -> str:
        if role == "output" and self.config.tied_output:
            role = "token_embd"
        try:
            slot, spec = self.family.plan.spec(role)
        except KeyError:
            raise KeyError(f"architecture {self.family.name} has no role {role!r}") from None
        if slot.per_layer != (layer is not None):
            raise KeyError(f"role {role!r} is {'' if slot.per_layer else 'not '}per-layer")
        if layer is not None and not 0 <= layer < self.config.n_layers:
            raise KeyError(f"layer {layer} out of range 0..{self.config.n_layers - 1}")
        return spec.tensor_name(layer)

    def slot_records(self, slot: Slot, layer: int | None = None) -> list[TensorRecord]:
        """The tensors of a present slot (in `layer`), in row order (q, k, v; gate, up)."""
        return [self.tensors[part.tensor_name(layer)] for part in slot.parts]

    @property
    def plan_bytes(self) -> int:
        """Bytes of the file's tensors the plan uses (a tied head counted once)."""
        return sum(
            r.nbytes
            for slot in self.plan.present
            for layer in slot.layers(self.config.n_layers)
            for r in self.slot_records(slot, layer)
        )

    def weight(self, role: str, layer: int | None = None) -> TensorRecord:
        """The tensor playing `role` (in `layer`); `output` is token_embd when tied."""
        name = self._name(role, layer)
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no tensor {name!r} (role {role})") from None

    def has_weight(self, role: str, layer: int | None = None) -> bool:
        try:
            return self._name(role, layer) in self.tensors
        except KeyError:
            return False

    @property
    def total_tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def quant_kind(self) -> str:
        """The file's quantization as llama.cpp names it from `general.file_type` ("Q4_K_M" for
        Qwen2.5's and Gemma 3's files, whose weights mix Q4_K, Q5_0, Q6_K and Q8_0; "Q4_1"),
        except where the spec names it otherwise ("MXFP4" for gpt-oss's MXFP4_MOE), else the
        type holding most bytes among the 2-D weights."""
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int) and file_type in _FILE_TYPES:
            return _FILE_TYPES[file_type]
        by_type: Counter[str] = Counter()
        for t in self.tensors.values():
            if len(t.shape) >= 2:
                by_type[t.qtype.name] += t.nbytes
        return by_type.most_common(1)[0][0] if by_type else "F32"

    def close(self) -> None:
        """Drop the memory map. Records handed out earlier keep their own reference."""
        self._data = None
        self.tensors = {}

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_gguf(path: str | os.PathLike[str]) -> GGUFModel:
    """Validate and memory-map the GGUF file at `path`; ModelLoadError on any problem."""
    path = Path(path)
    where = str(path)
    try:
        return _open(path)
    except OSError as e:  # unreadable file, I/O error, mmap refused
        raise ModelLoadError(f"{where}: cannot read the model file: {e.strerror or e}") from None
    except ModelLoadError as e:
        if where in e.message:
            raise
        raise ModelLoadError(f"{where}: {e.message}") from None


def _open(path: Path) -> GGUFModel:
    if not path.is_file():
        raise ModelLoadError("no such model file")
    header = read_header(path)  # every length and offset checked against the file size
    metadata = header.metadata
    arch_name = metadata.get("general.architecture")
    if not isinstance(arch_name, str):
        raise ModelLoadError("required metadata key 'general.architecture' is missing")
    family = get_family(arch_name)
    for key in family.required_keys():
        if key not in metadata:
            raise ModelLoadError(
                f"required metadata key {key!r} is missing (architecture {arch_name})"
            )
    data = np.memmap(path, dtype=np.uint8, mode="r")  # (file_size,)
    tensors: dict[str, TensorRecord] = {}
    for info in header.tensors:
        raw = data[info.offset : info.offset + info.nbytes]  # (nbytes,)
        if len(info.shape) >= 2:
            raw = raw.reshape(*info.shape[:-1], -1)  # (rows, row_bytes)
        tensors[info.name] = TensorRecord(info.name, info.qtype, info.shape, raw, info.offset)
    config, plan = family.open(metadata, tensors)
    _check_unused(plan, config, tensors)
    check_model(config, tensors.values())  # parses, but is it fit to serve? (REL-7)
    return GGUFModel(path, data, metadata, tensors, family, config, plan)


def _check_unused(plan: BoundPlan, config: ModelConfig, tensors: dict[str, TensorRecord]):
    """A tensor the plan does not use would be silently ignored: refuse the file instead (it is
    a variant of the family that the block does not implement, e.g. an attn_output bias)."""
    used = {
        part.tensor_name(layer)
        for slot in plan.present
        for layer in slot.layers(config.n_layers)
        for part in slot.parts
    }
    for name in tensors:
        if name not in used:
            raise ModelLoadError(
                f"tensor {name!r} is not part of the {config.arch} weight plan (the engines "
                "would ignore it and so compute a different model)"
            )
