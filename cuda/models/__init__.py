"""Each transformer block's layer sequence on the GPU, one module per block.

`model.family.block` (runtime.models) names the block a family runs; `block_of` gives its CUDA
module, whose `decode_layer(f, i, lw, splits)` and `prefill_layer(f, i, lw, n)` write layer i
as the steps of cuda/layers.py on the `Forward` f. A family with an existing block needs nothing
here (llama, qwen2 and phi3 differ only in what their plan and config carry); a new block is a
module and a row of `BLOCKS`, beside its numpy twin `runtime.models.<block>`.
"""

from __future__ import annotations

from types import ModuleType

from cuda.models import gemma3, llama
from runtime.errors import ModelLoadError

BLOCKS: dict[str, ModuleType] = {"llama": llama, "gemma3": gemma3}


def block_of(name: str) -> ModuleType:
    try:
        return BLOCKS[name]
    except KeyError:
        raise ModelLoadError(
            f"the cuda backend has no {name!r} block (it runs {', '.join(BLOCKS)})"
        ) from None
