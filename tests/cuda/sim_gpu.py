"""A numpy stand-in for the GPU, so the CUDA engine's own Python runs here without one.

`simulated_gpu(monkeypatch)` replaces what the engine reaches of PyCUDA and the driver: device
memory, copies, streams, the kernel loaders (`load_module` / `load_driver_module` of cuda.ops
and cuda.quant_ops), graph capture and the pointer queries of the residency check. Everything
above that runs unchanged: `CudaEngine.load`, the launchers (their argument packing, offsets and
grid sizes), the forward pass, the sampler. Each kernel is executed in numpy from its contract
in cuda/kernels/*.cu, reading its arguments as the driver would receive them (packed with the
launcher's letters, floats rounded to float32).

What this catches without a GPU: a buffer too small for what a kernel touches (every access is
bounds-checked against the allocation holding its pointer: SimFault, the GPU's illegal
address), uninitialized memory read (fresh allocations are filled with 0xFF bytes, NaN as
floats, unless the engine zeroes them), a wrong table, window, scale, norm or order in a
family's layer sequence (the logits disagree with the numpy engine), a per-step host value
frozen into a graph (a captured launch replays the arguments it was captured with), and the
launch sequence of a decode step (`Sim.trace`). What it cannot catch: a kernel that breaks its
own contract; the GPU tests of tests/cuda check those against numpy.
"""

from __future__ import annotations

import bisect
import math
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from gguf import GGMLQuantizationType as Q

from runtime.quants import dequantize, row_bytes

_STRUCT = {"P": "Q", "i": "i", "I": "I", "l": "q", "f": "f", "d": "d"}
MASKED_LOGIT = -3.0e38  # cuda/kernels/sampling.cu
_UNWRITTEN16 = 0xFFFF  # an fp16 value of fresh memory (SimMemory fills it with 0xFF bytes)


class SimFault(Exception):
    """A kernel or copy touched memory outside its allocation (an illegal address on a GPU)."""


@attrs.frozen
class Launch:
    name: str
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    letters: str = ""
    defines: tuple[tuple[str, Any], ...] = ()

    def describe(self, ledger: Any) -> list:
        """[name, grid, args] with each pointer shown as "allocation+offset" (ledger names), so
        two runs with other addresses compare equal."""
        entries = sorted(ledger.entries(), key=lambda e: e.ptr)
        starts = [e.ptr for e in entries]

        def show(value: Any, letter: str) -> Any:
            if letter != "P" or value == 0:
                return value
            e = entries[bisect.bisect_right(starts, value) - 1]
            return f"{e.name}+{value - e.ptr}"

        args = [show(a, t) for a, t in zip(self.args, self.letters, strict=True)]
        return [self.name, list(self.grid), args]


class SimMemory:
    """Device allocations as numpy byte arrays, found by any pointer inside them."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self.blocks: dict[int, np.ndarray] = {}
        self._next = 1 << 32

    def alloc(self, nbytes: int) -> int:
        base = self._next
        self._next += (nbytes + 255) // 256 * 256 + 4096  # a gap: past the end is no allocation
        self.blocks[base] = np.full(nbytes, 0xFF, np.uint8)  # uninitialized: NaN as floats
        bisect.insort(self._bases, base)
        return base

    def free(self, base: int) -> None:
        del self.blocks[base]
        self._bases.remove(base)

    def used(self) -> int:
        return sum(b.size for b in self.blocks.values())

    def span(self, ptr: int, nbytes: int) -> np.ndarray:
        """The uint8 view of [ptr, ptr + nbytes), which must lie inside one allocation."""
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0 or ptr < 0:
            raise SimFault(f"{ptr:#x} is in no allocation")
        base = self._bases[i]
        block = self.blocks[base]
        off = ptr - base
        if nbytes < 0 or off + nbytes > block.size:
            raise SimFault(
                f"{nbytes} bytes at {ptr:#x} run past the end of the {block.size}-byte "
                f"allocation at {base:#x} (offset {off})"
            )
        return block[off : off + nbytes]

    def array(self, ptr: int, dtype: Any, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return self.span(ptr, dt.itemsize * int(count)).view(dt)

    def rows(self, ptr: int, n: int, width: int, stride: int, dtype: Any = np.float32):
        """(n, width) writable view of rows `stride` elements apart."""
        dt = np.dtype(dtype)
        flat = self.array(ptr, dt, (n - 1) * stride + width) if n else self.array(ptr, dt, 0)
        return np.lib.stride_tricks.as_strided(
            flat, shape=(n, width), strides=(stride * dt.itemsize, dt.itemsize)
        )


class _Allocation:
    def __init__(self, sim: Sim, ptr: int):
        self._sim, self.ptr = sim, ptr

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        self._sim.mem.free(self.ptr)


class _Stream:
    def __init__(self, sim: Sim):
        self._sim, self.handle = sim, id(self)

    def synchronize(self) -> None:
        if self._sim.capturing is not None:
            raise SimFault("stream synchronize during graph capture")


class Sim:
    """The simulated device: memory, the launch trace, graph capture state."""

    def __init__(self, total_bytes: int = 141 << 30):
        self.mem = SimMemory()
        self.total_bytes = total_bytes
        self.trace: list[Launch] = []  # every launch executed or captured, in order
        self.capturing: list[Callable[[], None]] | None = None
        self._dequant: dict[tuple, np.ndarray] = {}
        self.fail_alloc = False
        self.driver = self._driver()

    # -- the pycuda.driver surface the engine uses ----------------------------------------------

    def _driver(self) -> types.SimpleNamespace:
        sim = self

        class Error(Exception):
            pass

        class MemoryError(Error):  # noqa: A001 - pycuda.driver.MemoryError
            pass

        class LaunchError(Error):
            pass

        device = types.SimpleNamespace(
            compute_capability=lambda: (9, 0),
            name=lambda: "simulated GPU",
            get_attribute=lambda attr: 132,
            retain_primary_context=lambda: types.SimpleNamespace(
                push=lambda: None, pop=lambda: None
            ),
        )

        def mem_alloc(nbytes: int) -> _Allocation:
            if sim.fail_alloc or sim.mem.used() + nbytes > sim.total_bytes:
                raise MemoryError("cuMemAlloc failed: out of memory")
            return _Allocation(sim, sim.mem.alloc(nbytes))

        def htod(ptr: int, array: np.ndarray) -> None:
            if sim.capturing is not None:
                raise SimFault("synchronous copy during graph capture")
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            sim.mem.span(int(ptr), data.size)[:] = data

        def dtoh(array: np.ndarray, ptr: int) -> None:
            data = array.reshape(-1).view(np.uint8)
            data[:] = sim.mem.span(int(ptr), data.size)

        def dtoh_async(array: np.ndarray, ptr: int, stream: Any = None) -> None:
            sim.run(lambda: dtoh(array, ptr))

        def memset_d8(ptr: int, value: int, nbytes: int) -> None:
            sim.mem.span(int(ptr), nbytes)[:] = value

        return types.SimpleNamespace(
            Error=Error,
            MemoryError=MemoryError,
            LaunchError=LaunchError,
            init=lambda: None,
            Context=types.SimpleNamespace(
                synchronize=lambda: None, get_device=lambda: device, pop=lambda: None
            ),
            device_attribute=types.SimpleNamespace(MULTIPROCESSOR_COUNT=16),
            mem_alloc=mem_alloc,
            mem_get_info=lambda: (sim.total_bytes - sim.mem.used(), sim.total_bytes),
            memcpy_htod=htod,
            memcpy_dtoh=dtoh,
            memcpy_dtoh_async=dtoh_async,
            memset_d8=memset_d8,
            pagelocked_empty=lambda shape, dtype: np.zeros(shape, dtype),
            Stream=lambda: _Stream(sim),
            _device=device,
        )

    def run(self, op: Callable[[], None]) -> None:
        """Execute a stream operation now, or record it while a graph is being captured."""
        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()

    # -- helpers for the kernels -----------------------------------------------------------------

    def f32(self, ptr: int, count: int) -> np.ndarray:
        return self.mem.array(ptr, np.float32, count)

    def i32(self, ptr: int, count: int) -> np.ndarray:
        return self.mem.array(ptr, np.int32, count)

    def matrix(self, ptr: int, qtype: Q, rows: int, cols: int) -> np.ndarray:
        """(rows, cols) float32 of the raw GGML rows at ptr (cached: weights never change)."""
        key = (ptr, qtype, rows, cols)
        w = self._dequant.get(key)
        if w is None:
            raw = self.mem.span(ptr, rows * row_bytes(qtype, cols))
            w = self._dequant[key] = dequantize(raw, qtype, (rows, cols))
        return w

    def forget_weights(self) -> None:
        self._dequant.clear()


# -- modules and kernels -----------------------------------------------------------------------


class _Kernel:
    def __init__(self, sim: Sim, name: str, defines: dict[str, Any]):
        self._sim, self.name, self._defines = sim, name, dict(defines or {})
        self._impl = resolve(name)
        self._fmt = ""

    def prepare(self, arg_types: str) -> _Kernel:
        self._fmt = "@" + "".join(_STRUCT[t] for t in arg_types)
        self._letters = arg_types
        return self

    def max_active_blocks(self, threads: int) -> int:  # PyCUDA's occupancy query
        return 2

    def prepared_async_call(self, grid, block, stream, *args: Any, pdl: bool = False) -> None:
        if len(args) != len(self._letters):
            raise TypeError(f"{self.name} takes {len(self._letters)} arguments, got {len(args)}")
        vals = [int(a) if t == "P" else a for a, t in zip(args, self._letters, strict=True)]
        # what the driver receives: packed with the letters (a float32 argument is rounded)
        packed = struct.unpack(self._fmt, struct.pack(self._fmt, *vals))
        grid = tuple(grid) + (1,) * (2 - len(grid))
        launch = Launch(
            self.name, grid, packed, self._letters, tuple(sorted(self._defines.items()))
        )
        sim, impl, defines = self._sim, self._impl, self._defines
        sim.trace.append(launch)
        sim.run(lambda: impl(sim, launch, defines))


class _Module:
    def __init__(self, sim: Sim, filename: str, defines: dict[str, Any] | None):
        self._sim, self.filename, self._defines = sim, filename, defines or {}

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(self._sim, name, self._defines)


class _Graph:
    def __init__(self, ops: list[Callable[[], None]], n_launches: int, trace: list[Launch]):
        self._ops, self.n_launches, self.trace = ops, n_launches, trace

    def launch(self) -> None:
        for op in self._ops:
            op()

    def close(self) -> None:
        self._ops = []


def simulated_gpu(monkeypatch) -> Sim:
    """Install a fresh simulated GPU for the rest of the test (or the monkeypatch's context)."""
    import cuda.engine
    import cuda.graph
    import cuda.moe_ops
    import cuda.ops
    import cuda.quant_ops
    import cuda.residency

    sim = Sim()
    drv = sim.driver
    drv.Device = _device_factory(drv)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    for mod in (cuda.ops, cuda.quant_ops, cuda.moe_ops):
        if hasattr(mod, "load_module"):
            monkeypatch.setattr(
                mod, "load_module", lambda f, defines=None: _Module(sim, f, defines)
            )
        monkeypatch.setattr(
            mod, "load_driver_module", lambda f, defines=None: _Module(sim, f, defines)
        )
    monkeypatch.setattr(cuda.engine, "prefetch", lambda specs: None)

    def capture(stream: Any, enqueue: Callable[[], int]) -> _Graph:
        assert sim.capturing is None
        sim.capturing, first = [], len(sim.trace)
        try:
            n = enqueue()
        finally:
            ops, sim.capturing = sim.capturing, None
        return _Graph(ops, n, sim.trace[first:])

    monkeypatch.setattr(cuda.graph, "capture", capture)

    def check_entry(entry: Any, device_ordinal: int) -> str | None:
        try:
            sim.mem.span(entry.ptr, entry.nbytes)
        except SimFault as exc:
            return f"{entry.name}: {exc}"
        return None

    monkeypatch.setattr(cuda.residency, "check_entry", check_entry)
    return sim


def _device_factory(drv: types.SimpleNamespace):
    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __new__(cls, ordinal: int):
            return drv._device

    return Device


# -- kernel contracts in numpy ---------------------------------------------------------------


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _silu(g):
    with np.errstate(over="ignore"):
        return g / (1.0 + np.exp(-g))


def _gelu_tanh(g):
    return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * g * (1.0 + 0.044715 * g * g)))


_ACT = {"swiglu": _silu, "geglu": _gelu_tanh}


def _rope(v: np.ndarray, cos: np.ndarray, sin: np.ndarray, half: int, neox: int) -> np.ndarray:
    """Rotate v (heads, D) float64 with one position's cos, sin (half,)."""
    out = v.copy()
    if neox:
        a, b = v[:, :half], v[:, half : 2 * half]
        out[:, :half], out[:, half : 2 * half] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = v[:, 0 : 2 * half : 2], v[:, 1 : 2 * half : 2]
        out[:, 0 : 2 * half : 2], out[:, 1 : 2 * half : 2] = a * cos - b * sin, a * sin + b * cos
    return out


def _cache(sim: Sim, ptr: int, n_kv: int, max_ctx: int, d: int) -> np.ndarray:
    return sim.mem.array(ptr, np.float16, n_kv * max_ctx * d).reshape(n_kv, max_ctx, d)


def _attend(q, kc, vc, p: int, window: int, scale: float, sinks=None) -> np.ndarray:
    """q (H, D) at position p over the fp16 cache layer (KV, ctx, D): (H * D,) float64.
    sinks (H,): gpt-oss's extra logit per head, in each softmax's denominator only."""
    n_heads, d = q.shape
    group = n_heads // kc.shape[0]
    lo = max(0, p - window + 1) if window > 0 else 0
    out = np.empty((n_heads, d))
    for h in range(n_heads):
        raw_k, raw_v = kc[h // group, lo : p + 1], vc[h // group, lo : p + 1]
        if np.any(raw_k.view(np.uint16) == _UNWRITTEN16) or np.any(
            raw_v.view(np.uint16) == _UNWRITTEN16
        ):  # the fill of fresh memory (a NaN the model computes has another bit pattern)
            raise SimFault(f"attention at {p} reads keys that were never written")
        k, v = raw_k.astype(np.float64), raw_v.astype(np.float64)
        s = k @ q[h] * scale
        with np.errstate(invalid="ignore"):  # the model's own NaN propagates, as on the GPU
            top = s.max() if sinks is None else max(s.max(), float(sinks[h]))
            w = np.exp(s - top)
            extra = 0.0 if sinks is None else math.exp(float(sinks[h]) - top)
            out[h] = w @ v / (w.sum() + extra)
    return out.reshape(-1)


def _head_norm(v: np.ndarray, w_ptr: int, sim: Sim, d: int, eps: float) -> np.ndarray:
    return v if w_ptr == 0 else _rms(v, sim.f32(w_ptr, d), eps)


def k_rms_norm(sim: Sim, ln: Launch, _d) -> None:
    x, w, y, n_cols, eps = ln.args
    n = ln.grid[0]
    xs = sim.f32(x, n * n_cols).reshape(n, n_cols).copy()
    sim.f32(y, n * n_cols)[:] = _rms(xs, sim.f32(w, n_cols), eps).reshape(-1)


def k_add_rms_norm(sim: Sim, ln: Launch, _d) -> None:
    y, w_post, x, w_next, xn, n_cols, eps = ln.args
    n = ln.grid[0]
    if abs(x - y) < 4 * n * n_cols:
        raise SimFault("add_rms_norm: x overlaps y")
    ys = sim.f32(y, n * n_cols).reshape(n, n_cols).copy()
    xs = sim.f32(x, n * n_cols).reshape(n, n_cols)
    xs += _rms(ys, sim.f32(w_post, n_cols), eps).astype(np.float32)
    if xn:
        sim.f32(xn, n * n_cols)[:] = _rms(xs, sim.f32(w_next, n_cols), eps).reshape(-1)


def k_rope_kv_write(sim: Sim, ln: Launch, _d) -> None:
    qkv, n, pos_p, cos_p, sin_p, kc_p, vc_p, n_heads, n_kv, d, half, max_ctx, neox, qn, kn, eps = (
        ln.args
    )
    assert ln.grid[0] == n
    pos0 = int(sim.i32(pos_p, 1)[0])
    width = (n_heads + 2 * n_kv) * d
    rows = sim.f32(qkv, n * width).reshape(n, width)
    cos = sim.f32(cos_p, (pos0 + n) * half).reshape(-1, half)
    sin = sim.f32(sin_p, (pos0 + n) * half).reshape(-1, half)
    kc, vc = _cache(sim, kc_p, n_kv, max_ctx, d), _cache(sim, vc_p, n_kv, max_ctx, d)
    if pos0 + n > max_ctx:
        raise SimFault(f"rope_kv_write past the cache: {pos0 + n} > {max_ctx}")
    for t in range(n):
        p = pos0 + t
        q = _head_norm(rows[t, : n_heads * d].reshape(n_heads, d), qn, sim, d, eps)
        k = _head_norm(
            rows[t, n_heads * d : (n_heads + n_kv) * d].reshape(n_kv, d), kn, sim, d, eps
        )
        rows[t, : n_heads * d] = _rope(q, cos[p], sin[p], half, neox).reshape(-1)
        kc[:, p] = _rope(k, cos[p], sin[p], half, neox).astype(np.float16)
        vc[:, p] = rows[t, (n_heads + n_kv) * d :].reshape(n_kv, d).astype(np.float16)


def _sinks(sim: Sim, ln: Launch, n_heads: int) -> tuple[tuple, np.ndarray | None]:
    """The arguments without the *_sinks kernels' last one, and the sink logits it points to."""
    if not ln.name.endswith("_sinks"):
        return ln.args, None
    return ln.args[:-1], sim.f32(ln.args[-1], n_heads).astype(np.float64)


def _decode_common(sim: Sim, ln: Launch, defines, rope: bool) -> None:
    d = int(defines["HEAD_DIM"])
    args, sinks = _sinks(sim, ln, ln.grid[0])
    if rope:
        (qkv, kc_p, vc_p, out, pos_p, part, counters, cos_p, sin_p, qn, kn, eps,
         n_heads, n_kv, max_ctx, half, neox, scale, window) = args  # fmt: skip
    else:
        qkv, kc_p, vc_p, out, pos_p, part, counters, n_heads, n_kv, max_ctx, scale, window = args
    n_splits = ln.grid[1]
    if ln.grid[0] != n_heads or not 1 <= n_splits <= 32:
        raise SimFault(f"decode attention grid {ln.grid} for {n_heads} heads")
    sim.f32(part, n_heads * n_splits * (d + 2))  # the split partials must fit
    if np.any(sim.mem.array(counters, np.uint32, n_heads)):
        raise SimFault("decode attention counters are not zero at rest")
    p = int(sim.i32(pos_p, 1)[0])
    if p >= max_ctx:
        raise SimFault(f"decode at position {p} of a {max_ctx}-token cache")
    row = sim.f32(qkv, (n_heads + 2 * n_kv) * d).astype(np.float64)
    q = row[: n_heads * d].reshape(n_heads, d)
    kc, vc = _cache(sim, kc_p, n_kv, max_ctx, d), _cache(sim, vc_p, n_kv, max_ctx, d)
    if rope:
        cos = sim.f32(cos_p, (p + 1) * half).reshape(-1, half)[p]
        sin = sim.f32(sin_p, (p + 1) * half).reshape(-1, half)[p]
        k = row[n_heads * d : (n_heads + n_kv) * d].reshape(n_kv, d)
        q = _rope(_head_norm(q, qn, sim, d, eps), cos, sin, half, neox)
        kc[:, p] = _rope(_head_norm(k, kn, sim, d, eps), cos, sin, half, neox).astype(np.float16)
        vc[:, p] = row[(n_heads + n_kv) * d :].reshape(n_kv, d).astype(np.float16)
    sim.f32(out, n_heads * d)[:] = _attend(q, kc, vc, p, window, scale, sinks)


def k_attn_decode(sim, ln, defines) -> None:
    _decode_common(sim, ln, defines, rope=False)


def k_attn_decode_rope(sim, ln, defines) -> None:
    _decode_common(sim, ln, defines, rope=True)


def _prefill(sim, defines, args, n, sinks=None) -> None:
    qkv, kc_p, vc_p, out, pos_p, n_heads, n_kv, max_ctx, scale, window = args
    d = int(defines["HEAD_DIM"])
    pos0 = int(sim.i32(pos_p, 1)[0])
    width = (n_heads + 2 * n_kv) * d
    rows = sim.f32(qkv, n * width).reshape(n, width)
    kc, vc = _cache(sim, kc_p, n_kv, max_ctx, d), _cache(sim, vc_p, n_kv, max_ctx, d)
    res = sim.f32(out, n * n_heads * d).reshape(n, n_heads * d)
    for t in range(n):
        q = rows[t, : n_heads * d].reshape(n_heads, d).astype(np.float64)
        res[t] = _attend(q, kc, vc, pos0 + t, window, scale, sinks)


def k_attn_prefill(sim, ln, defines) -> None:
    assert ln.grid[1] == ln.args[5]  # grid (n_tokens, n_heads)
    args, sinks = _sinks(sim, ln, ln.grid[1])
    _prefill(sim, defines, args, ln.grid[0], sinks)


def k_attn_prefill_tc(sim, ln, defines) -> None:
    (qkv, kc, vc, out, pos, n, *rest), sinks = _sinks(sim, ln, ln.grid[1])
    _prefill(sim, defines, (qkv, kc, vc, out, pos, *rest), n, sinks)


def k_advance_position(sim, ln, _d) -> None:
    pos, by = ln.args
    sim.i32(pos, 1)[0] += by


def k_glu(sim, ln, _d) -> None:
    gate_up, h, d_ff, n = ln.args
    g = sim.f32(gate_up, n * 2 * d_ff).reshape(n, 2 * d_ff).astype(np.float64)
    sim.f32(h, n * d_ff)[:] = (_ACT[ln.name](g[:, :d_ff]) * g[:, d_ff:]).reshape(-1)


def k_add_inplace(sim, ln, _d) -> None:
    x, y, n = ln.args
    sim.f32(x, n)[:] += sim.f32(y, n)


def k_checksum(sim, ln, _d) -> None:
    p, n_words, out = ln.args
    words = sim.mem.array(p, "<u4", n_words).astype(np.uint64)
    weights = np.arange(n_words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        sim.mem.array(out, np.uint64, 1)[0] += np.sum(words * weights, dtype=np.uint64)


def _choice(x: np.ndarray, pick: Callable[[], int]) -> int:
    """-1 when any logit is NaN or infinite (the samplers' flag), else pick()."""
    return -1 if not np.all(np.isfinite(x)) else pick()


def k_argmax(sim, ln, _d) -> None:
    logits, vocab, part_v, part_i, counter, out, pos, advance = ln.args
    sim.f32(part_v, ln.grid[0])
    sim.i32(part_i, ln.grid[0])
    if sim.mem.array(counter, np.uint32, 1)[0]:
        raise SimFault("argmax counter is not zero at rest")
    x = sim.f32(logits, vocab)
    sim.i32(out, 1)[0] = _choice(x, lambda: int(np.argmax(x)))  # lowest id among equal maxima
    if pos:
        sim.i32(pos, 1)[0] += advance


def _penalized(sim, logits, vocab, pen_ids, n_pen, penalty, marks) -> np.ndarray:
    x = sim.f32(logits, vocab).astype(np.float64)
    if np.any(sim.mem.array(marks, np.uint8, vocab)):
        raise SimFault("sampler marks are not zero at rest")
    if n_pen:
        ids = sim.i32(pen_ids, n_pen)
        v = x[ids]
        x[ids] = np.where(v > 0, v / penalty, v * penalty)
    return x


def k_sample_greedy(sim, ln, _d) -> None:
    logits, vocab, pen_ids, n_pen, penalty, marks, out = ln.args
    x = _penalized(sim, logits, vocab, pen_ids, n_pen, penalty, marks)
    sim.i32(out, 1)[0] = _choice(sim.f32(logits, vocab), lambda: int(np.argmax(x)))


def k_sample_full(sim, ln, _d) -> None:
    """runtime.sampling's chain after the penalty, with the draw u given."""
    (logits, vocab, pen_ids, n_pen, penalty, marks, temperature, top_k, top_p, min_p, u, xs,
     out) = ln.args  # fmt: skip
    if not np.all(np.isfinite(sim.f32(logits, vocab))):
        sim.i32(out, 1)[0] = -1
        return
    x = _penalized(sim, logits, vocab, pen_ids, n_pen, penalty, marks) / temperature
    sim.mem.array(xs, np.float64, vocab)[:] = x
    x_max = x.max()
    cand = np.flatnonzero(x >= x_max - 40.0)
    order = cand[np.argsort(-x[cand], kind="stable")]
    w = np.exp(x[order] - x_max)
    c = np.cumsum(w)
    n = order.size
    if top_k > 0:
        n = min(n, top_k)
    if top_p < 1.0:
        n = min(n, int(np.argmax(c >= top_p * c[-1])) + 1)
    if min_p > 0.0:
        n = min(n, max(1, int(np.count_nonzero(w >= min_p))))
    i = int(np.searchsorted(c[:n], u * c[n - 1], side="right"))
    sim.i32(out, 1)[0] = int(order[min(i, n - 1)])


def k_mask_logits(sim, ln, _d) -> None:
    logits, ids, saved, n = ln.args
    idx = sim.i32(ids, n)
    x = sim.f32(logits, int(idx.max()) + 1 if n else 0)
    sim.f32(saved, n)[:] = x[idx]
    x[idx] = np.where(np.isfinite(x[idx]), np.float32(MASKED_LOGIT), x[idx])


# -- quant kernels (names: <kind>_<type suffix>) ------------------------------------------------


def _suffix_types() -> dict[str, Q]:
    from cuda.quant_ops import _TYPES

    return {suffix: qtype for qtype, (suffix, _) in _TYPES.items()}


def _split_type(name: str) -> tuple[str, Q]:
    for suffix, qtype in sorted(_suffix_types().items(), key=lambda kv: -len(kv[0])):
        if name.endswith("_" + suffix):
            return name[: -len(suffix) - 1], qtype
    raise KeyError(name)


def _store(y: np.ndarray, value: np.ndarray, accumulate: int) -> None:
    if accumulate:
        y += value.astype(np.float32)
    else:
        y[...] = value


def k_embed(sim, ln, _d, qtype: Q) -> None:
    w, n_cols, ids, out, scale = ln.args
    n = ln.grid[1]
    rb = row_bytes(qtype, n_cols)
    res = sim.f32(out, n * n_cols).reshape(n, n_cols)
    for t, tok in enumerate(sim.i32(ids, n)):
        raw = sim.mem.span(w + int(tok) * rb, rb)
        res[t] = dequantize(raw, qtype, (1, n_cols))[0] * np.float32(scale)


def k_matvec(sim, ln, _d, qtype: Q) -> None:
    w, rows, cols, x, y, acc = ln.args
    value = sim.matrix(w, qtype, rows, cols) @ sim.f32(x, cols)
    _store(sim.f32(y, rows), value, acc)


def k_matvec_norm(sim, ln, _d, qtype: Q) -> None:
    w, rows, cols, x, g, eps, y, acc = ln.args
    xn = _rms(sim.f32(x, cols), sim.f32(g, cols), eps).astype(np.float32)
    _store(sim.f32(y, rows), sim.matrix(w, qtype, rows, cols) @ xn, acc)


def k_matvec_norm_glu(sim, ln, _d, qtype: Q, act: str) -> None:
    w, d_ff, cols, x, g, eps, h, acc = ln.args
    xn = _rms(sim.f32(x, cols), sim.f32(g, cols), eps).astype(np.float32)
    gu = (sim.matrix(w, qtype, 2 * d_ff, cols) @ xn).astype(np.float64)
    _store(sim.f32(h, d_ff), _ACT[act](gu[:d_ff]) * gu[d_ff:], acc)


def k_matvec_seg(sim, ln, _d) -> None:
    from cuda.quant_ops import _TYPE_CODES

    types_by_code = {code: qtype for qtype, code in _TYPE_CODES.items()}
    cols, x, g, eps, y, bias, acc, *segs = ln.args
    xv = sim.f32(x, cols)
    if ln.name.endswith("_norm"):  # matvec_seg_norm, and the mr forms mvx_seg_<cfg>_norm
        xv = _rms(xv, sim.f32(g, cols), eps).astype(np.float32)
    parts = []
    for j in range(0, len(segs), 3):
        w, code, rows = segs[j : j + 3]
        if rows:
            parts.append(sim.matrix(w, types_by_code[code], rows, cols) @ xv)
    value = np.concatenate(parts)
    if bias:
        value = value + sim.f32(bias, value.size)
    _store(sim.f32(y, value.size), value, acc)


def k_matmul(sim, ln, _d, qtype: Q, variant: str) -> None:
    w, rows, cols, x, n, y, ldy, bias, acc = ln.args
    wm = sim.matrix(w, qtype, rows, cols)
    xm = sim.f32(x, n * cols).reshape(n, cols)
    if variant.startswith("tc"):  # tensor cores: X and W rounded to fp16 per tile
        wm, xm = wm.astype(np.float16).astype(np.float32), xm.astype(np.float16).astype(np.float32)
    value = xm @ wm.T
    if bias:
        value = value + sim.f32(bias, rows)
    _store(sim.mem.rows(y, n, rows, ldy), value, acc)


_FIXED: dict[str, Callable] = {
    "rms_norm": k_rms_norm,
    "add_rms_norm": k_add_rms_norm,
    "rope_kv_write": k_rope_kv_write,
    "advance_position": k_advance_position,
    "swiglu": k_glu,
    "geglu": k_glu,
    "add_inplace": k_add_inplace,
    "checksum_words": k_checksum,
    "attn_decode": k_attn_decode,
    "attn_decode_rope": k_attn_decode_rope,
    "attn_prefill": k_attn_prefill,
    "attn_prefill_tc": k_attn_prefill_tc,
    "attn_decode_sinks": k_attn_decode,
    "attn_decode_rope_sinks": k_attn_decode_rope,
    "attn_prefill_sinks": k_attn_prefill,
    "attn_prefill_tc_sinks": k_attn_prefill_tc,
    "sample_greedy": k_sample_greedy,
    "argmax_multi": k_argmax,
    "sample_full": k_sample_full,
    "mask_logits": k_mask_logits,
    "matvec_seg": k_matvec_seg,
    "matvec_seg_norm": k_matvec_seg,
}


def _base_name(name: str) -> str:
    """The base kernel family of a multi-row variant (cuda/matvec_variants.py: mvx_<kind>_<cfg>
    with the same arguments as its base kernel): mvx_mv_r2_q4_k -> matvec_q4_k."""
    if not name.startswith("mvx_"):
        return name
    parts = name.split("_")
    kind, rest = parts[1], parts[3:]  # parts[2] is the configuration
    if kind == "seg":
        return "_".join(["matvec_seg", *rest])
    base = {"mv": "matvec", "norm": "matvec_norm"}.get(kind, f"matvec_norm_{kind}")
    return "_".join([base, *rest])


def resolve(name: str) -> Callable[[Sim, Launch, dict], None]:
    """The numpy contract of kernel `name` (KeyError for a kernel this stand-in lacks)."""
    from tests.cuda.sim_rows import ROWS_FIXED, resolve_rows

    if name.startswith("mvb_") or name in ROWS_FIXED:  # the batched decode step's
        return resolve_rows(name)
    name = _base_name(name)
    if name in _FIXED:
        return _FIXED[name]
    if name in ("embed_plain_f32", "embed_plain_f16"):
        qtype = Q.F32 if name.endswith("f32") else Q.F16
        return lambda sim, ln, d: k_embed(sim, ln, d, qtype)
    if name.startswith("moe_"):
        from tests.cuda.sim_moe import resolve_moe

        return resolve_moe(name)
    kind, qtype = _split_type(name)
    if kind == "embed":
        return lambda sim, ln, d: k_embed(sim, ln, d, qtype)
    if kind.startswith("matmul_"):
        variant = kind.removeprefix("matmul_")
        return lambda sim, ln, d: k_matmul(sim, ln, d, qtype, variant)
    for act in _ACT:
        if kind == f"matvec_norm_{act}":
            return lambda sim, ln, d: k_matvec_norm_glu(sim, ln, d, qtype, act)
    if kind.startswith("matvec_norm"):
        return lambda sim, ln, d: k_matvec_norm(sim, ln, d, qtype)
    if kind.startswith("matvec"):
        return lambda sim, ln, d: k_matvec(sim, ln, d, qtype)
    raise KeyError(f"the simulated GPU has no kernel {name!r}")


def kernel_kind(name: str) -> str:
    """A launch's kind without type and variant: "matvec", "matvec_norm", "matvec_norm_geglu",
    "matmul", "embed", or the kernel's own name (attention, norms, argmax, ...); a batched
    product: "mvb_<kind>"."""
    if name.startswith("mvb_"):
        return "_".join(name.split("_")[:2])
    name = _base_name(name)
    if name in _FIXED:
        return name
    if name.startswith("moe_"):  # moe_topk, moe_gate_up[_norm]_<type>, moe_down_<type>
        return name if name == "moe_topk" else _split_type(name)[0]
    if name.startswith("embed"):
        return "embed"
    kind, _ = _split_type(name)
    if kind.startswith("matmul"):
        return "matmul"
    for act in _ACT:
        if kind == f"matvec_norm_{act}":
            return kind
    if kind.startswith("matvec_norm"):
        return "matvec_norm"
    return "matvec"
