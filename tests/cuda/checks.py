"""Checks shared by the GPU kernel tests: error bounds against float64 numpy, guarded outputs."""

from __future__ import annotations

import numpy as np

GUARD = 37  # floats of sentinel after each output
SENTINEL = np.float32(-12345.0)
EXACT_TOL = 1e-5  # fp32 kernels, relative to sum |w x| of each output
TC_TOL = 2e-3  # tensor-core products: X and W rounded to fp16


def assert_close(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, tol: float) -> None:
    """|got - ref| <= tol * magnitude (+ a floor for outputs whose terms are all ~0)."""
    assert np.all(np.isfinite(got))
    bound = tol * magnitude + 1e-30
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"max err/bound {float((err / bound)[worst]):.3g} at {worst}: got {got[worst]}, ref {ref[worst]}"
    )


def rel(a, b) -> float:
    """Relative L2 error of a against the reference b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


#: activation -> (float64 reference, a bound on |act'|: an error e in the gate moves act by
#: at most slope * e); gelu_tanh is ggml's GELU (tanh approximation), as gemma3 uses it
def _silu(g: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g: silu -> -0
        return g / (1.0 + np.exp(-g))


def _gelu_tanh(g: np.ndarray) -> np.ndarray:
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * g * (1.0 + 0.044715 * g * g)))


GLU_REFS = {"silu": (_silu, 1.1), "gelu_tanh": (_gelu_tanh, 1.13)}


def glu_ref(gate: np.ndarray, up: np.ndarray, act: str) -> np.ndarray:
    """act(gate) * up in float64."""
    return GLU_REFS[act][0](np.asarray(gate, np.float64)) * up


def attention_ref(q, kc, vc, start: int, scale: float, window: int, sinks=None) -> np.ndarray:
    """q (T, H, D) at positions start..; kc, vc (KV, >= start + T, D). (T, H * D) float64:
    query t sees keys max(0, p - window + 1) .. p (p = start + t), all of 0 .. p if window 0.
    sinks (H,): one more logit in head h's softmax, with no value (gpt-oss)."""
    t_new, n_heads, d = q.shape
    group = n_heads // kc.shape[0]
    out = np.empty((t_new, n_heads * d))
    for t in range(t_new):
        p = start + t
        lo = max(0, p - window + 1) if window else 0
        for h in range(n_heads):
            k, v = kc[h // group, lo : p + 1].astype(np.float64), vc[h // group, lo : p + 1]
            s = k @ q[t, h].astype(np.float64) * scale
            top = s.max() if sinks is None else max(s.max(), float(sinks[h]))
            w = np.exp(s - top)
            total = w.sum() + (0.0 if sinks is None else np.exp(float(sinks[h]) - top))
            out[t, h * d : (h + 1) * d] = (w @ v.astype(np.float64)) / total
    return out
