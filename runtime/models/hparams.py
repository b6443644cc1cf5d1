"""Reading a family's hyperparameters from GGUF metadata, every problem naming its key.

`common_config` reads the keys every family here shares (`{arch}.block_count`, ...); a family
adds its own through `Family.hparams` (gemma3: the sliding window and its rope base).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.errors import ModelLoadError

_REQUIRED: Any = object()

#: keys every family needs (under its `{arch}.` prefix); the rest have llama.cpp's defaults
REQUIRED_KEYS = (
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.layer_norm_rms_epsilon",
)


class Keys:
    """Typed access to `{arch}.*` metadata: positive ints and floats, or a ModelLoadError."""

    def __init__(self, metadata: Mapping[str, Any], arch: str):
        self.metadata, self.arch = metadata, arch

    def has(self, key: str) -> bool:
        return f"{self.arch}.{key}" in self.metadata

    def int(self, key: str, default: Any = _REQUIRED) -> int:
        return self._get(key, int, default)

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        return self._get(key, float, default)

    def _get(self, key: str, kind: type, default: Any) -> Any:
        full = f"{self.arch}.{key}"
        if full not in self.metadata:
            if default is _REQUIRED:
                raise ModelLoadError(f"required metadata key {full!r} is missing")
            return default
        value = self.metadata[full]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok or (kind is int and value != int(value)):
            raise ModelLoadError(
                f"metadata key {full!r} must be a positive {kind.__name__}, got {value!r}"
            )
        return kind(value)


def common_config(keys: Keys, rope_scalings: tuple[str, ...] = ()) -> dict[str, Any]:
    """ModelConfig fields from the keys every family shares (llama.cpp's defaults elsewhere).

    `rope_scalings`: the `rope.scaling.type` values the family's own hparams read (gpt-oss:
    "yarn"); any other scaling is refused rather than ignored."""
    a = keys.arch
    d_model = keys.int("embedding_length")
    n_heads = keys.int("attention.head_count")
    n_kv = keys.int("attention.head_count_kv", n_heads)
    if n_heads % n_kv:
        raise ModelLoadError(
            f"{a}.attention.head_count {n_heads} is not a multiple of "
            f"{a}.attention.head_count_kv {n_kv}"
        )
    if keys.has("attention.key_length"):  # gemma3: 256 with d_model 640 and 4 heads
        head_dim = keys.int("attention.key_length")
        value_dim = keys.int("attention.value_length", head_dim)
        if value_dim != head_dim:
            raise ModelLoadError(
                f"{a}.attention.value_length {value_dim} differs from key_length {head_dim}: "
                "not supported"
            )
    elif d_model % n_heads:
        raise ModelLoadError(
            f"{a}.embedding_length {d_model} is not a multiple of {a}.attention.head_count {n_heads}"
        )
    else:
        head_dim = d_model // n_heads
    scaling = keys.metadata.get(f"{a}.rope.scaling.type", "none")
    if scaling not in ("none", None, *rope_scalings):
        raise ModelLoadError(f"{a}.rope.scaling.type {scaling!r} is not supported")
    vocab = keys.metadata.get(f"{a}.vocab_size")
    if vocab is None:
        tokens = keys.metadata.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelLoadError(
                f"neither {a}.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size"
            )
        vocab = len(tokens)
    return dict(
        arch=a,
        n_layers=keys.int("block_count"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=keys.int("feed_forward_length"),
        vocab_size=keys.int("vocab_size", vocab),
        context_length=keys.int("context_length", 2048),
        rope_base=keys.float("rope.freq_base", 10000.0),
        rope_dim=keys.int("rope.dimension_count", head_dim),
        norm_eps=keys.float("attention.layer_norm_rms_epsilon"),
    )
