"""Is a model that parses also fit to serve? Metadata ranges, tensor layout, a probe, a full scan.

A GGUF file can pass every structural check and still compute NaN: an RMSNorm epsilon that is
NaN or negative, a rope base of 0, NaN embeddings, every tensor pointing at the same bytes, a
bit flipped in a block scale. Served as `ready`, such a model answered every request with an
empty `end` (the argmax of NaN logits is token 0, EOS for SmolLM2). So, in load order:

1. `check_model(config, tensors)` when the file is opened (runtime.gguf_file): every number
   the forward pass depends on is in a range some real model uses, and no two tensors share
   bytes. Each refusal names the metadata key or the tensors.
2. `probed(engine)` once the engine is loaded, before `ready`: a few tokens through prefill and
   one decode step; every logit must be finite. This catches what metadata cannot (NaN or
   overflowing weights) in milliseconds, because in a dense model every weight touches every
   position's logits.
3. `scan_tensors(model)` with `--check-tensors`: every tensor dequantized and checked finite,
   naming the first bad one (a full pass over the weights, so opt-in).

Non-finite logits at run time are refused by the samplers (runtime.sampling.check_finite, and
the CUDA kernels' flag). Requirement REL-7 in specs/requirements-reliability.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import ModelLoadError
from runtime.model_config import ModelConfig

if TYPE_CHECKING:
    from runtime.gguf_file import GGUFModel, TensorRecord

#: RMSNorm epsilon range: real models use 1e-6 .. 1e-5 (BERT-likes 1e-12); 0 or below divides
#: by zero on a zero row, and above 1e-2 the norm stops normalizing.
MAX_NORM_EPS = 1e-2
#: Rope frequency bases are 1e4 .. 1e7 in real models; below 1 the per-position angle grows
#: without bound (1e-300 overflows the rotary tables to inf).
MIN_ROPE_BASE = 1.0
#: Trained contexts reach 1 M tokens today; the GPU sampler keys token ids in 24 bits.
MAX_CONTEXT_LENGTH = 1 << 24
MAX_VOCAB = 1 << 24
#: Tokens the probe prefills (then one decode step): enough to run attention over several
#: positions, few enough to cost milliseconds on the cpu backend.
PROBE_TOKENS = 3


def _refuse(key: str, value: Any, rule: str) -> ModelLoadError:
    return ModelLoadError(f"metadata key {key!r} = {value!r} is out of range: {rule}")


def check_config(config: ModelConfig) -> None:
    """ModelLoadError naming the key unless every hyperparameter is in a servable range."""
    a = config.arch
    eps = config.norm_eps
    if not (math.isfinite(eps) and 0.0 < eps <= MAX_NORM_EPS):
        raise _refuse(
            f"{a}.attention.layer_norm_rms_epsilon",
            eps,
            f"the RMSNorm epsilon must be a finite number in (0, {MAX_NORM_EPS}]",
        )
    for layer, base in enumerate((config.rope_base, *config.layer_rope_base)):
        if not (math.isfinite(base) and base >= MIN_ROPE_BASE):
            where = "" if layer == 0 else f" (the rope base of layer {layer - 1})"
            raise _refuse(
                f"{a}.rope.freq_base",
                base,
                f"the rope base must be a finite number >= {MIN_ROPE_BASE:g} "
                f"(real models: 1e4..1e7){where}",
            )
    for name, scale in (
        ("attention scale", config.attn_scale),
        ("embedding scale", config.embed_scale),
    ):
        if not (math.isfinite(scale) and scale > 0):
            raise ModelLoadError(f"the {name} {scale!r} must be a finite positive number")
    if config.context_length > MAX_CONTEXT_LENGTH:
        raise _refuse(
            f"{a}.context_length", config.context_length, f"at most {MAX_CONTEXT_LENGTH} tokens"
        )
    if config.vocab_size > MAX_VOCAB:
        raise _refuse(f"{a}.vocab_size", config.vocab_size, f"at most {MAX_VOCAB} tokens")
    if config.head_dim % 2:
        derived = config.head_dim * config.n_heads == config.d_model
        key, value = (
            ("attention.head_count", config.n_heads)
            if derived
            else ("attention.key_length", config.head_dim)
        )
        raise _refuse(
            f"{a}.{key}",
            value,
            f"it makes the head size {config.head_dim}, which must be even (rotary embeddings "
            "rotate pairs)",
        )
    if config.rope_dim % 2 or config.rope_dim > config.head_dim:
        raise _refuse(
            f"{a}.rope.dimension_count",
            config.rope_dim,
            f"must be even and at most the head size {config.head_dim}",
        )


def check_layout(tensors: Iterable[TensorRecord]) -> None:
    """ModelLoadError naming both tensors if any two share bytes (a corrupt tensor table: e.g.
    every offset 0 makes every weight read the first tensor's bytes)."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors)
    for (start, end, name), (nstart, nend, nname) in zip(spans, spans[1:], strict=False):
        if nstart < end:
            raise ModelLoadError(
                f"tensors {name!r} (bytes {start}..{end}) and {nname!r} (bytes {nstart}..{nend}) "
                "overlap: every tensor must have its own data (the tensor table is corrupt)"
            )


def check_model(config: ModelConfig, tensors: Iterable[TensorRecord]) -> None:
    """Everything checkable without computing: metadata ranges, then the tensor layout."""
    check_config(config)
    check_layout(tensors)


def _nonfinite(logits: np.ndarray) -> int:
    return int(logits.size - np.count_nonzero(np.isfinite(logits)))


def probe_engine(engine: Any, where: str = "the model") -> None:
    """Prefill a few tokens and take one decode step; ModelLoadError (naming `where`, the file)
    unless every logit is finite both times, in slot 0. Leaves the slot released (position 0)."""
    vocab, room = engine.config.vocab_size, engine.max_context
    n = max(1, min(PROBE_TOKENS, room - 1))
    tokens = [i * vocab // n for i in range(n)]  # spread over the vocabulary: rows 0, v/3, 2v/3
    engine.release(0)
    try:
        engine.prefill(0, tokens)
        stages = [(f"prefilling tokens {tokens}", engine.logits(0))]
        if room > n:
            engine.decode([0], [tokens[0]])
            stages.append(("one decode step after it", engine.logits(0)))
    finally:
        engine.release(0)
    for what, logits in stages:
        bad = _nonfinite(logits)
        if bad:
            raise ModelLoadError(
                f"{where}: probe forward pass failed: {bad} of {logits.size} logits are NaN or infinite "
                f"after {what}; the weights or metadata compute garbage, so the model is not "
                "served (--check-tensors names a tensor holding non-finite values, if any)"
            )


def probed(engine: Any, where: str = "the model") -> Any:
    """`engine` once `probe_engine` passes; on failure the engine is closed, the error raised."""
    try:
        probe_engine(engine, where)
    except BaseException:
        engine.close()
        raise
    return engine


def scan_tensors(model: GGUFModel) -> None:
    """`--check-tensors`: dequantize every tensor (one at a time) and require finite values;
    ModelLoadError naming the first tensor that holds NaN or infinity."""
    for name, record in model.tensors.items():
        values = record.dequantize().reshape(-1)
        finite = np.isfinite(values)
        if not finite.all():
            first = int(np.argmin(finite))
            raise ModelLoadError(
                f"{model.path}: --check-tensors: tensor {name!r} ({record.qtype.name}, shape {record.shape}) "
                f"holds {values.size - int(np.count_nonzero(finite))} non-finite values "
                f"(the first at flat index {first}: {values[first]})"
            )
