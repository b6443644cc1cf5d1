"""Weight plans: which tensors a family's block reads, their shapes from the metadata, their types.

A plan is a list of *slots*: one weight as the engines use it, made of one GGUF tensor or of
several stacked along their rows (q | k | v, gate | up), per layer or once per model. The same
plan drives every consumer, so none of them lists tensors of its own:

- `bind_plan` (at open): every tensor of every present slot exists, has the shape the metadata
  implies and an allowed type; an optional slot (a bias, the output head) is present or absent
  as a whole, the same in every layer. The result says which slots the file has.
- the numpy engine dequantizes each present slot into one stacked array;
- the CUDA upload makes one allocation per slot (`Slot.alloc`) and its VRAM estimate sums them.

Shapes are numpy order, as `runtime.gguf_file` reports them: a matrix is (out_features,
in_features), the reverse of the dimension list stored in the GGUF file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import attrs
from gguf import GGMLQuantizationType as Q

from runtime.errors import ModelLoadError
from runtime.model_config import ModelConfig
from runtime.quants import BLOCK_SIZES

ShapeFn = Callable[[ModelConfig], tuple[int, ...]]

#: matrices may be any type we dequantize (a Q4_K_M file mixes five); the CUDA engine checks
#: its kernels' subset itself (cuda.weights.check_matrices)
MATRIX_TYPES = frozenset(BLOCK_SIZES)
#: norm weights and biases: llama.cpp's converters write them as F32 (F16 seen in small files)
VECTOR_TYPES = frozenset({Q.F32, Q.F16})


@attrs.frozen
class TensorSpec:
    """One GGUF tensor: its role (what `GGUFModel.weight` is asked for), its name (with `{i}` for
    the layer), its expected shape and the types it may have."""

    role: str
    name: str
    shape: ShapeFn
    types: frozenset[Q]

    def tensor_name(self, layer: int | None) -> str:
        return self.name if layer is None else self.name.format(i=layer)


@attrs.frozen
class Slot:
    """A weight as the engines see it: `parts` stacked along the rows, in order."""

    name: str  # the engines' name: "qkv", "attn_norm", "output", ...
    parts: tuple[TensorSpec, ...]
    per_layer: bool
    #: "matrix" (kept quantized on the GPU), "vector" (float32 everywhere), "experts" (a stack
    #: of matrices (n_experts, out, in) kept quantized everywhere: only the chosen ones are read)
    kind: str
    alloc: str  # the GPU allocation's name ("blk.{i}.attn_qkv"): one per slot and layer
    required: bool = True  # False: the file may lack the slot as a whole (tied output, a bias)

    def alloc_name(self, layer: int | None) -> str:
        return self.alloc if layer is None else self.alloc.format(i=layer)

    def layers(self, n_layers: int) -> range | tuple[None]:
        """The layer indices the slot has: every layer, or (None,) for a global slot."""
        return range(n_layers) if self.per_layer else (None,)


def matrix(name: str, alloc: str, *parts: tuple[str, str, ShapeFn], required: bool = True) -> Slot:
    """A matrix slot from (role, tensor name, shape) parts; per layer when the names hold {i}."""
    return _slot("matrix", MATRIX_TYPES, name, alloc, parts, required)


def vector(name: str, alloc: str, *parts: tuple[str, str, ShapeFn], required: bool = True) -> Slot:
    return _slot("vector", VECTOR_TYPES, name, alloc, parts, required)


def experts(name: str, alloc: str, part: tuple[str, str, ShapeFn]) -> Slot:
    """One 3-D tensor (n_experts, out, in) of expert matrices: a mixture-of-experts FFN's."""
    return _slot("experts", MATRIX_TYPES, name, alloc, (part,), True)


def _slot(kind, types, name, alloc, parts, required) -> Slot:
    specs = tuple(TensorSpec(role, tname, shape, types) for role, tname, shape in parts)
    per_layer = "{i}" in specs[0].name
    return Slot(name, specs, per_layer, kind, alloc, required)


@attrs.frozen
class WeightPlan:
    slots: tuple[Slot, ...]

    @property
    def global_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if not s.per_layer)

    @property
    def layer_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.per_layer)

    def spec(self, role: str) -> tuple[Slot, TensorSpec]:
        """The slot and tensor of `role`; KeyError when the plan has no such role."""
        for slot in self.slots:
            for part in slot.parts:
                if part.role == role:
                    return slot, part
        raise KeyError(role)

    def slot(self, name: str) -> Slot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(name)


@attrs.frozen
class BoundPlan(WeightPlan):
    """A plan checked against one file: `slots` are the ones the file has, in plan order."""

    @property
    def present(self) -> tuple[Slot, ...]:
        return self.slots

    def has(self, slot_name: str) -> bool:
        return any(s.name == slot_name for s in self.slots)


def bind_plan(plan: WeightPlan, config: ModelConfig, tensors: Mapping[str, object]) -> BoundPlan:
    """Check the file's tensors against `plan` (ModelLoadError naming the tensor); `tensors` maps
    names to records with `.shape` and `.qtype`. The config's shapes must not depend on slot
    presence (tied_output, qkv_bias are decided from the result)."""
    present = []
    for slot in plan.slots:
        if _slot_present(slot, config, tensors):
            present.append(slot)
    return BoundPlan(tuple(present))


def _slot_present(slot: Slot, config: ModelConfig, tensors: Mapping[str, object]) -> bool:
    layers = slot.layers(config.n_layers)
    if not slot.required:
        first = [p.tensor_name(0 if slot.per_layer else None) for p in slot.parts]
        if not any(name in tensors for name in first):
            # absent as a whole: then in every layer (checked lazily, stopping at the first)
            for layer, part in itertools.product(layers, slot.parts):
                name = part.tensor_name(layer)
                if name in tensors:
                    raise ModelLoadError(
                        f"tensor {name!r} is present but layer 0 has no {slot.name} "
                        f"(an optional weight is present in every layer or in none)"
                    )
            return False
    # lazily, layer by layer: a corrupt block_count of 2**60 fails at the first absent layer
    for layer, part in itertools.product(layers, slot.parts):
        _check_tensor(part, layer, config, tensors)
    return True


def _check_tensor(part: TensorSpec, layer: int | None, config: ModelConfig, tensors) -> None:
    name = part.tensor_name(layer)
    expected = part.shape(config)
    t = tensors.get(name)
    if t is None:
        raise ModelLoadError(
            f"required tensor {name!r} is missing (role {part.role}, expected shape {expected})"
        )
    if t.shape != expected:
        raise ModelLoadError(
            f"tensor {name!r} has shape {t.shape}, expected {expected} (role {part.role}, "
            f"from the metadata: n_layers={config.n_layers} d_model={config.d_model} "
            f"n_heads={config.n_heads} n_kv_heads={config.n_kv_heads} "
            f"head_dim={config.head_dim} d_ff={config.d_ff} vocab={config.vocab_size})"
        )
    if t.qtype not in part.types:
        allowed = ", ".join(sorted(q.name for q in part.types))
        raise ModelLoadError(
            f"tensor {name!r} has type {t.qtype.name}, which role {part.role} does not allow "
            f"(allowed: {allowed})"
        )
