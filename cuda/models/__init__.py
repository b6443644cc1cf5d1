"""Each transformer block's layer sequence on the GPU, one module per block.

`model.family.block` (runtime.models) names the block a family runs; `BLOCKS` gives its CUDA
module, whose `decode_layer(f, i, lw, splits)` and `prefill_layer(f, i, lw, n)` write layer i
as the steps of cuda/layers.py on the `Forward` f. A family with an existing block needs nothing
here (llama, qwen2 and phi3 differ only in what their plan and config carry); a new block is a
module and a row of `BLOCKS`, beside its numpy twin `runtime.models.<block>`.
"""

from __future__ import annotations

from types import ModuleType

from cuda.models import gemma3, gpt_oss, llama

#: Family.block -> its CUDA layer sequence; `cuda.weights.check_model` refuses any other block
BLOCKS: dict[str, ModuleType] = {"llama": llama, "gemma3": gemma3, "gpt_oss": gpt_oss}
