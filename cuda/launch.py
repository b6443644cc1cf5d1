"""Kernel launches through the driver API (ctypes on libcuda), for the one thing PyCUDA cannot do:
programmatic dependent launch (PDL, sm_90+).

A kernel launched with the attribute CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION may
start before the kernel ahead of it in the stream has finished (once that one's blocks have all
called `griddepcontrol.launch_dependents`); it waits with `griddepcontrol.wait` before touching
what the earlier kernel wrote (cuda/kernels/pdl.cuh). In a captured CUDA graph the edge becomes a
programmatic one, so the ~1 us gap between graph nodes shrinks and each kernel's weight fetch
overlaps the kernel before it.

`DriverModule(cubin)` loads a cubin (compiled by cuda.compile, the same bytes PyCUDA loads) into
the current context; `module.get_function(name).prepare("PiiPPi")` gives a `DriverKernel` whose
`prepared_async_call(grid, block, stream, *args, pdl=False)` mirrors PyCUDA's. Argument letters
as PyCUDA's `prepare`: P pointer (int or anything `int()` takes), i int32, I uint32, l int64,
f float32, d float64. Arguments are packed into a buffer owned by the kernel object: the driver
copies them at launch (and at capture), so reusing the buffer for the next launch is safe.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

from cuda.graph import GraphError, _lib

_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6
_STRUCT = {"P": "Q", "i": "i", "I": "I", "l": "q", "f": "f", "d": "d"}


class _Attr(ctypes.Structure):  # CUlaunchAttribute: id, pad to 8, 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_Attr)),
        ("n_attrs", ctypes.c_uint),
    ]


_fns: ctypes.CDLL | None = None


def _driver() -> ctypes.CDLL:
    global _fns
    if _fns is None:
        lib = _lib()
        vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        lib.cuModuleLoadData.argtypes = [pvp, ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [pvp, vp, ctypes.c_char_p]
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_Config), vp, pvp, pvp]
        lib.cuOccupancyMaxActiveBlocksPerMultiprocessor.argtypes = [
            ctypes.POINTER(ctypes.c_int), vp, ctypes.c_int, ctypes.c_size_t,
        ]  # fmt: skip
        _fns = lib
    return _fns


def _check(call: str, status: int) -> None:
    if status != 0:
        raise GraphError(call, status)


class DriverKernel:
    def __init__(self, handle: ctypes.c_void_p, name: str):
        self._fn, self.name = handle, name
        self._attr = _Attr()
        self._attr.id = _ATTR_PROGRAMMATIC_STREAM_SERIALIZATION
        self._attr.value[0] = 1
        self._cfg = _Config()
        self.prepare("")

    def prepare(self, arg_types: str) -> DriverKernel:
        self._types = arg_types
        self._pointer_args = tuple(i for i, t in enumerate(arg_types) if t == "P")
        fmt = "@" + "".join(_STRUCT[t] for t in arg_types)
        self._struct = struct.Struct(fmt)
        self._buf = ctypes.create_string_buffer(max(self._struct.size, 8))
        base = ctypes.addressof(self._buf)
        offsets = [struct.calcsize("@" + fmt[1 : 1 + i] + _STRUCT[t]) - struct.calcsize(_STRUCT[t])
                   for i, t in enumerate(arg_types)]  # fmt: skip
        self._params = (ctypes.c_void_p * max(len(arg_types), 1))(*(base + o for o in offsets))
        return self

    def max_active_blocks(self, threads: int) -> int:
        """Blocks of `threads` threads that fit on one SM at once (registers, shared memory):
        the grid of a persistent kernel is this times the SM count."""
        n = ctypes.c_int()
        _check(
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            _driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(
                ctypes.byref(n), self._fn, threads, 0
            ),
        )
        return max(1, n.value)

    def prepared_async_call(self, grid, block, stream, *args: Any, pdl: bool = False) -> None:
        if len(args) != len(self._types):
            raise TypeError(f"{self.name} takes {len(self._types)} arguments, got {len(args)}")
        vals = list(args)
        for i in self._pointer_args:
            vals[i] = int(vals[i])
        self._struct.pack_into(self._buf, 0, *vals)
        cfg = self._cfg
        cfg.grid[0], cfg.grid[1], cfg.grid[2] = (tuple(grid) + (1, 1))[:3]
        cfg.block[0], cfg.block[1], cfg.block[2] = (tuple(block) + (1, 1))[:3]
        cfg.stream = stream.handle if stream is not None else None
        cfg.attrs = ctypes.pointer(self._attr) if pdl else None
        cfg.n_attrs = 1 if pdl else 0
        _check(
            f"cuLaunchKernelEx({self.name})",
            _driver().cuLaunchKernelEx(ctypes.byref(cfg), self._fn, self._params, None),
        )


class DriverModule:
    """A cubin loaded into the current context (lives as long as the context)."""

    def __init__(self, cubin: bytes):
        self._handle = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(cubin, len(cubin))
        _check(
            "cuModuleLoadData", _driver().cuModuleLoadData(ctypes.byref(self._handle), self._image)
        )
        self._functions: dict[str, DriverKernel] = {}

    def get_function(self, name: str) -> DriverKernel:
        fn = self._functions.get(name)
        if fn is None:
            handle = ctypes.c_void_p()
            status = _driver().cuModuleGetFunction(
                ctypes.byref(handle), self._handle, name.encode()
            )
            _check(f"cuModuleGetFunction({name})", status)
            fn = self._functions[name] = DriverKernel(handle, name)
        return fn
