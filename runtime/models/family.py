"""A model family: its weight plan, its config keys, and the block its engines run.

`Family.open(metadata, tensors)` turns a file's metadata and tensor table into the
`ModelConfig` and the `BoundPlan` every engine follows. Which block a family runs is a name
(`block`: "llama" or "gemma3"); each engine maps it to its own module
(`runtime.models.<block>` for numpy, the CUDA engine its own), so `runtime` never imports an
engine and an engine never tests the architecture's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from runtime.errors import ModelLoadError
from runtime.model_config import ModelConfig
from runtime.models.hparams import REQUIRED_KEYS, Keys, common_config
from runtime.models.plan import BoundPlan, WeightPlan, bind_plan

#: family-specific config: (keys, the common fields) -> fields to add or override
HParams = Callable[[Keys, dict[str, Any]], dict[str, Any]]


def _no_extras(_keys: Keys, _fields: dict[str, Any]) -> dict[str, Any]:
    return {}


@attrs.frozen
class Family:
    name: str  # `general.architecture`
    plan: WeightPlan
    block: str  # the transformer block each engine runs: "llama" | "gemma3" | "gpt_oss"
    rope_style: str  # "norm" | "neox"
    hparams: HParams = _no_extras
    rope_scalings: tuple[str, ...] = ()  # `rope.scaling.type` values `hparams` reads

    def required_keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{k}" for k in REQUIRED_KEYS)

    def config_from_metadata(
        self, metadata: Mapping[str, Any], tensors: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """The config from metadata alone: slot-dependent flags (tied_output, qkv_bias) False.

        With the file's `tensors`, a block_count the file cannot hold fails first, naming the
        first absent layer's first tensor (before per-layer values are built for 2**32 layers).
        """
        keys = Keys(metadata, self.name)
        fields = common_config(keys, self.rope_scalings)
        if tensors is not None and fields["n_layers"] > len(tensors):
            part = self.plan.layer_slots[0].parts[0]
            i = next(i for i in range(fields["n_layers"]) if part.tensor_name(i) not in tensors)
            raise ModelLoadError(
                f"required tensor {part.tensor_name(i)!r} is missing (role {part.role}; the "
                f"metadata declares {fields['n_layers']} layers)"
            )
        fields |= self.hparams(keys, fields)
        return ModelConfig(**fields, rope_style=self.rope_style, tied_output=False, qkv_bias=False)

    def open(
        self, metadata: Mapping[str, Any], tensors: Mapping[str, Any]
    ) -> tuple[ModelConfig, BoundPlan]:
        """Config and checked plan of one file; ModelLoadError naming the key or tensor."""
        config = self.config_from_metadata(metadata, tensors)
        bound = bind_plan(self.plan, config, tensors)
        # llama.cpp reuses token_embd as the output head when output.weight is absent
        config = attrs.evolve(
            config, tied_output=not bound.has("output"), qkv_bias=bound.has("qkv_bias")
        )
        return config, bound
