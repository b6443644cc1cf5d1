"""The model-family seam: one table row per family, one block module per engine.

A family (`runtime.models.family.Family`) is declared by its weight plan (`plan.WeightPlan`:
slots of GGUF tensors with shapes computed from the metadata, allowed types, optional slots),
its config keys (`hparams`), its rope style and the name of the transformer block its engines
run ("llama", "gemma3" or "gpt_oss"). The numpy engine runs `runtime.models.<block>.forward_layer`; the
CUDA engine keeps its own module per block. So adding a family whose block exists is a row in
`FAMILIES`; a family with a new block adds one module per engine as well.
(specs/decisions/0012-model-family-seam.md lists each family's differences.)
"""

from __future__ import annotations

from runtime.errors import ModelLoadError
from runtime.models import gemma3, gpt_oss, llama
from runtime.models.family import Family

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        # llama.cpp treats q/k/v biases of llama files as optional; qwen2 always has them
        Family("llama", llama.plan(qkv_bias="optional"), block="llama", rope_style="norm"),
        Family("qwen2", llama.plan(qkv_bias="required"), block="llama", rope_style="neox"),
        # phi3 stores q|k|v as one attn_qkv and gate|up as one matrix named ffn_up
        Family(
            "phi3",
            llama.plan(qkv_bias="none", fused=True),
            block="llama",
            rope_style="neox",
            hparams=llama.phi3_hparams,
        ),
        Family("gemma3", gemma3.plan(), block="gemma3", rope_style="neox", hparams=gemma3.hparams),
        Family(
            "gpt-oss",
            gpt_oss.plan(),
            block="gpt_oss",
            rope_style="neox",
            hparams=gpt_oss.hparams,
            rope_scalings=("yarn",),
        ),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelLoadError(
            f"architecture {name!r} is not supported (supported: {', '.join(FAMILIES)})"
        ) from None


__all__ = ["FAMILIES", "Family", "get_family"]
