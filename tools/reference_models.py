"""Tiny random HF checkpoints of Phi-3 and GPT-OSS for the reference fixtures.

Runs only in the reference environment (torch + transformers; see
`tools/make_reference_fixtures.py`), never in CI.

Every float weight is rounded to fp16 before anything uses it, so converting the checkpoint to a
GGUF with `--outtype f16` (or keeping a tensor F32) changes no value: the GGUF and the model that
computes the reference logits hold the same numbers. GPT-OSS's expert weights are quantized to
MXFP4 in the layout of the real checkpoints (`*_blocks` / `*_scales`), and the model's experts are
then set to transformers' own dequantization of those bytes, for the same reason.

Initial values are scaled so the logits have margins well above fp32 noise, the routers prefer
clear experts, and some SwiGLU inputs go past the clamp limit (7) so the clamp is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # e2m1 magnitudes, codes 0..7


def _normal(gen: torch.Generator, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * std + mean).half().float()


def quantize_mxfp4_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., cols) float -> HF MXFP4 (blocks (..., cols/32, 16) uint8, scales (..., cols/32) uint8).

    OCP MX: a block of 32 shares the exponent floor(log2(amax)) - 2 (e2m1's largest exponent),
    stored biased by 127; each value is the nearest e2m1 code of value / 2^exp (ties to the
    smaller magnitude), sign in bit 3. Byte j holds value 2j in its low nibble and 2j+1 in its
    high nibble, as in the gpt-oss checkpoints.
    """
    *lead, cols = w.shape
    blocks = w.reshape(*lead, cols // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.zeros_like(amax))
    scaled = blocks / torch.exp2(exp)
    dist = (scaled.abs().unsqueeze(-1) - _FP4_GRID).abs()
    codes = dist.argmin(-1).to(torch.uint8) | ((scaled < 0).to(torch.uint8) << 3)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exp.squeeze(-1) + 127).to(torch.uint8)
    return packed.contiguous(), scales.contiguous()


def gpt_oss_config(vocab_size: int, bos: int, eos: int, pad: int):
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=96,  # 3 MXFP4 blocks per row (real: 2880 = 90 blocks)
        intermediate_size=64,  # differs from hidden_size so transposes cannot hide
        num_hidden_layers=4,  # sliding, full, sliding, full
        num_attention_heads=4,  # grouped like the real one (64 query heads over 8 kv heads)
        num_key_value_heads=2,
        head_dim=64,  # the real head size
        num_local_experts=8,
        num_experts_per_tok=4,  # the real top-k
        sliding_window=4,  # real: 128; prompts here are longer than 4 tokens
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        rms_norm_eps=1e-5,
        attention_bias=True,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        attn_implementation="eager",  # the plain math: no fused kernels in the reference
        experts_implementation="eager",
        architectures=["GptOssForCausalLM"],
    )


def build_gpt_oss(config, seed: int):
    """(model in fp32 eval mode, MXFP4 expert tensors by checkpoint name)."""
    from transformers import GptOssForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    h, inter, n_exp = config.hidden_size, config.intermediate_size, config.num_local_experts
    quantized: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                continue
            if name.endswith("norm.weight"):
                p.copy_(_normal(gen, p.shape, 0.1, 1.0))
            elif name.endswith("sinks"):
                p.copy_(_normal(gen, p.shape, 1.0))
            elif name.endswith("bias"):
                p.copy_(_normal(gen, p.shape, 0.3 if "router" in name else 0.1))
            elif "embed_tokens" in name:
                p.copy_(_normal(gen, p.shape, 1.0))
            else:  # (out, in) linear weights; the router gets a wider spread (decisive routing)
                scale = 3.0 if "router" in name or "lm_head" in name else 1.0
                p.copy_(_normal(gen, p.shape, scale / p.shape[1] ** 0.5))
        for i, layer in enumerate(model.model.layers):
            ex = layer.mlp.experts
            prefix = f"model.layers.{i}.mlp.experts."
            # rows (out, in) per expert, each row scaled by its own factor so block exponents vary
            gate_up = torch.randn(n_exp, 2 * inter, h, generator=gen) * (2.5 / h**0.5)
            gate_up *= torch.exp2(torch.randint(-2, 3, (n_exp, 2 * inter, 1), generator=gen))
            down = torch.randn(n_exp, h, inter, generator=gen) * (1.0 / inter**0.5)
            for proj, rows in (("gate_up_proj", gate_up), ("down_proj", down)):
                blocks, scales = quantize_mxfp4_rows(rows)
                quantized[prefix + proj + "_blocks"] = blocks
                quantized[prefix + proj + "_scales"] = scales
                # transformers' own decode of those bytes: (E, in, out), the layout it multiplies
                values = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
                getattr(ex, proj).copy_(values)
            ex.gate_up_proj_bias.copy_(_normal(gen, ex.gate_up_proj_bias.shape, 0.5))
            ex.down_proj_bias.copy_(_normal(gen, ex.down_proj_bias.shape, 0.1))
    return model, quantized


def save_gpt_oss(model, quantized: dict[str, torch.Tensor], out: Path) -> None:
    """The checkpoint as the real ones are stored: experts as MXFP4 blocks/scales, the rest f32."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))
    }
    state.update(quantized)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["GptOssForCausalLM"]
    cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def phi3_config(vocab_size: int, bos: int, eos: int, pad: int):
    from transformers import Phi3Config

    return Phi3Config(
        vocab_size=vocab_size,
        hidden_size=192,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 96, Phi-3-mini's head size (MHA, like the real one)
        num_key_value_heads=2,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=2047,  # Phi-3-mini-4k's value; every prompt here is far shorter
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        attn_implementation="eager",
    )


def build_phi3(config, seed: int):
    from transformers import Phi3ForCausalLM

    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(_normal(gen, p.shape, 0.1, 1.0))
            elif "embed_tokens" in name:
                p.copy_(_normal(gen, p.shape, 1.0))
            else:
                scale = 3.0 if "lm_head" in name else 1.0
                p.copy_(_normal(gen, p.shape, scale / p.shape[1] ** 0.5))
    return model
