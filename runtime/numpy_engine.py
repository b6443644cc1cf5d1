"""The fp32 numpy reference engine: a llama-family forward pass on dequantized weights.

Every weight is dequantized once at load to a contiguous fp32 array laid out for `x @ W`
(in_features, out_features), so each projection is one BLAS call; Q, K, V are fused into one
matrix and so are gate and up. The KV cache and the rotary tables are allocated at load for
`max_context` positions; a step allocates only small temporaries. Prefill is one batched causal
pass over all new tokens; a step is the same pass with one token.

This engine is the reference the CUDA engine is compared with, and the fallback backend.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from runtime.engine_api import ProgressCallback, ResidencyReport
from runtime.errors import InvalidRequest, ModelLoadError
from runtime.gguf_file import GGUFModel
from runtime.model_config import ModelConfig
from runtime.numpy_layers import apply_rope, attention, rms_norm, rope_tables, swiglu
from runtime.progress import ProgressReporter
from runtime.sampling import SamplingParams, sample_from_logits

_RESIDENCY_SAMPLE = 4096  # elements sampled per weight array for the residency checksum


class NumpyEngine:
    backend = "cpu"

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, np.ndarray],
        *,
        max_context: int,
        quant_kind: str,
    ):
        c = self.config = config
        self.max_context = max_context
        self.quant_kind = quant_kind
        self.w = weights  # name -> read-only fp32 array; shapes in NumpyEngine.load
        self.k_cache = np.zeros((c.n_layers, c.n_kv_heads, max_context, c.head_dim), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)  # (n_layers, n_kv_heads, max_context, head_dim)
        self.rope_cos, self.rope_sin = rope_tables(max_context, c.rope_dim, c.rope_base)
        self._logits = np.zeros(c.vocab_size, np.float32)  # (vocab,) of the last position
        self._pos = 0
        self._closed = False
        self._fingerprint = {name: _fingerprint(a) for name, a in self.w.items()}

    # -- load ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, model: GGUFModel, *, max_context: int, progress: ProgressCallback | None = None
    ) -> NumpyEngine:
        c = model.config
        if c.rope_style not in ("norm", "neox"):
            raise ModelLoadError(f"{model.path}: rope style {c.rope_style!r} is not supported")
        if max_context < 1:
            raise ModelLoadError(f"max_context must be positive, got {max_context}")
        fused_qkv = not model.has_weight("attn_q", 0)
        fused_gu = not model.has_weight("ffn_gate", 0)
        roles = ["attn_norm", "attn_output", "ffn_norm", "ffn_down"]
        roles += ["attn_qkv"] if fused_qkv else ["attn_q", "attn_k", "attn_v"]
        roles += ["ffn_gate_up"] if fused_gu else ["ffn_gate", "ffn_up"]
        if c.qkv_bias:
            roles += ["attn_q_bias", "attn_k_bias", "attn_v_bias"]
        globals_ = ["token_embd", "output_norm"] + ([] if c.tied_output else ["output"])
        total = sum(model.weight(r).nbytes for r in globals_)
        total += sum(model.weight(r, i).nbytes for r in roles for i in range(c.n_layers))
        reporter = ProgressReporter(total, progress)

        def deq(role: str, layer: int | None = None) -> np.ndarray:
            rec = model.weight(role, layer)
            out = rec.dequantize()
            reporter.advance(rec.nbytes)
            return out

        L, d = c.n_layers, c.d_model
        qkv_dim = c.n_heads * c.head_dim + 2 * c.kv_dim
        w = {
            "token_embd": deq("token_embd"),  # (vocab, d_model); also the tied output head
            "output_norm": deq("output_norm"),  # (d_model,)
            "attn_norm": np.empty((L, d), np.float32),  # (n_layers, d_model)
            "ffn_norm": np.empty((L, d), np.float32),  # (n_layers, d_model)
            "w_qkv": np.empty((L, d, qkv_dim), np.float32),  # (n_layers, d_model, q|k|v)
            "w_o": np.empty((L, c.n_heads * c.head_dim, d), np.float32),  # (n_layers, H*D, d)
            "w_gate_up": np.empty((L, d, 2 * c.d_ff), np.float32),  # (n_layers, d, gate|up)
            "w_down": np.empty((L, c.d_ff, d), np.float32),  # (n_layers, d_ff, d_model)
        }
        if c.qkv_bias:
            w["b_qkv"] = np.empty((L, qkv_dim), np.float32)  # (n_layers, q|k|v)
        for i in range(L):
            w["attn_norm"][i] = deq("attn_norm", i)
            w["ffn_norm"][i] = deq("ffn_norm", i)
            if fused_qkv:
                w["w_qkv"][i] = deq("attn_qkv", i).T  # stored (q|k|v rows, d_model)
            else:
                w["w_qkv"][i] = np.concatenate([deq(r, i) for r in _QKV], axis=0).T
            if c.qkv_bias:
                w["b_qkv"][i] = np.concatenate([deq(r + "_bias", i) for r in _QKV])
            w["w_o"][i] = deq("attn_output", i).T
            if fused_gu:
                w["w_gate_up"][i] = deq("ffn_gate_up", i).T  # stored (gate|up rows, d_model)
            else:
                w["w_gate_up"][i] = np.concatenate([deq("ffn_gate", i), deq("ffn_up", i)]).T
            w["w_down"][i] = deq("ffn_down", i).T
        if not c.tied_output:
            w["output"] = deq("output")  # (vocab, d_model)
        for a in w.values():
            a.flags.writeable = False  # nothing may change a weight after load
        engine = cls(c, w, max_context=max_context, quant_kind=model.quant_kind)
        reporter.finish()
        return engine

    # -- Engine protocol -----------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        self._pos = 0

    def prefill(self, tokens: Sequence[int]) -> None:
        self._forward(tokens, all_logits=False)

    def step(self, token: int) -> None:
        self._forward((token,), all_logits=False)

    def prefill_all_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Like `prefill`, but returns (T, vocab) logits of every new position (teacher forcing)."""
        return self._forward(tokens, all_logits=True)

    def logits(self) -> np.ndarray:
        return self._logits.copy()

    def sample(self, params: SamplingParams, history: Sequence[int], draw: int) -> int:
        return sample_from_logits(self._logits, params, history, draw)

    def memory_bytes(self) -> int:
        if self._closed:
            return 0
        arrays = [*self.w.values(), self.k_cache, self.v_cache, self.rope_cos, self.rope_sin]
        return sum(a.nbytes for a in arrays) + self._logits.nbytes

    def check_residency(self) -> ResidencyReport:
        if self._closed:
            return ResidencyReport(False, 0, "the engine is closed: no weights are held")
        checked = 0
        for name, (ptr, shape, crc, nbytes) in self._fingerprint.items():
            a = self.w.get(name)
            if a is None:
                return ResidencyReport(False, checked, f"weight {name} is no longer held")
            now = _fingerprint(a)
            if now[:2] != (ptr, shape):
                return ResidencyReport(False, checked, f"weight {name} moved or changed shape")
            if now[2] != crc:
                return ResidencyReport(False, checked, f"weight {name} changed (checksum)")
            checked += nbytes
        return ResidencyReport(
            True,
            checked,
            f"{len(self._fingerprint)} weight arrays intact "
            f"(sampled checksum over {checked} bytes)",
        )

    def close(self) -> None:
        self._closed = True
        self.w = {}
        self.k_cache = self.v_cache = np.zeros((0, 0, 0, 0), np.float32)

    # -- the forward pass ----------------------------------------------------------------------

    # A broken model (NaN or huge weights) overflows here; numpy would print a RuntimeWarning to
    # stderr, a line that is not narration JSON. The numbers go on quietly instead, and the
    # sampler refuses the non-finite logits they lead to (NonFiniteLogits, REL-5/REL-7).
    @np.errstate(all="ignore")
    def _forward(self, tokens: Sequence[int], *, all_logits: bool) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the engine is closed")
        c = self.config
        ids = np.asarray(tokens, dtype=np.int64)  # (T,)
        t_new, start = ids.size, self._pos
        if t_new == 0:
            raise InvalidRequest("no tokens to process")
        if start + t_new > self.max_context:
            raise InvalidRequest(f"{start + t_new} tokens exceed the context ({self.max_context})")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise InvalidRequest(f"token id out of range 0..{c.vocab_size - 1}")
        w = self.w
        H, KV, D = c.n_heads, c.n_kv_heads, c.head_dim
        q_dim, kv_dim = H * D, KV * D
        end = start + t_new
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]  # (T, rope_dim/2)
        scale = 1.0 / np.sqrt(D)
        x = w["token_embd"][ids]  # (T, d_model) residual stream, a fresh copy
        for i in range(c.n_layers):
            h = rms_norm(x, w["attn_norm"][i], c.norm_eps)  # (T, d_model)
            qkv = h @ w["w_qkv"][i]  # (T, q_dim + 2 kv_dim)
            if c.qkv_bias:
                qkv += w["b_qkv"][i]
            q = qkv[:, :q_dim].reshape(t_new, H, D)  # views into qkv
            k = qkv[:, q_dim : q_dim + kv_dim].reshape(t_new, KV, D)
            v = qkv[:, q_dim + kv_dim :].reshape(t_new, KV, D)
            apply_rope(q, cos, sin, c.rope_style)
            apply_rope(k, cos, sin, c.rope_style)
            self.k_cache[i, :, start:end] = k.transpose(1, 0, 2)  # (KV, T, D)
            self.v_cache[i, :, start:end] = v.transpose(1, 0, 2)
            att = attention(q, self.k_cache[i], self.v_cache[i], start, scale)  # (T, H*D)
            x += att @ w["w_o"][i]
            h = rms_norm(x, w["ffn_norm"][i], c.norm_eps)
            x += swiglu(h @ w["w_gate_up"][i], c.d_ff) @ w["w_down"][i]
        self._pos = end
        head = w.get("output", w["token_embd"])  # (vocab, d_model)
        rows = x if all_logits else x[-1:]
        logits = rms_norm(rows, w["output_norm"], c.norm_eps) @ head.T  # (T or 1, vocab)
        self._logits[:] = logits[-1]
        return logits


_QKV = ("attn_q", "attn_k", "attn_v")


def _fingerprint(a: np.ndarray) -> tuple[int, tuple[int, ...], int, int]:
    """(data pointer, shape, crc32 of a fixed sample of elements, sampled bytes)."""
    flat = a.reshape(-1)
    idx = np.linspace(0, flat.size - 1, min(flat.size, _RESIDENCY_SAMPLE)).astype(np.int64)
    sample = flat[idx].tobytes()
    return a.ctypes.data, a.shape, zlib.crc32(sample), len(sample)
