"""The kernel cubin cache (cuda.kernel_cache): keys, verified files, atomic stores.

Pure Python, no GPU: the builds here are plain functions returning bytes. The GPU test at the
end (marked gpu) checks that a warm load runs no compiler at all.
"""

from __future__ import annotations

import os

import pytest

from cuda import kernel_cache as kc
from cuda.compile import KERNEL_DIR, NVCC_OPTIONS, kernel_sources

SOURCE = '#include "common.cuh"\n__global__ void k(float* x) { x[0] = ONE; }\n'


def _key(tmp_path, source=SOURCE, options=("-O3",), arch="sm_90", toolchain="t1"):
    return kc.cache_key(source, kc.headers(tmp_path), list(options), arch, toolchain)


def test_key_changes_with_every_input(tmp_path):
    (tmp_path / "common.cuh").write_text("#define ONE 1.0f\n")
    base = _key(tmp_path)
    assert _key(tmp_path) == base  # deterministic
    others = {
        "source": _key(tmp_path, source=SOURCE + "\n"),
        "define": _key(tmp_path, options=("-O3", "-DHEAD_DIM=128")),
        "option": _key(tmp_path, options=("-O2",)),
        "arch": _key(tmp_path, arch="sm_80"),
        "toolchain": _key(tmp_path, toolchain="t2"),
    }
    (tmp_path / "common.cuh").write_text("#define ONE 2.0f\n")
    others["header edit"] = _key(tmp_path)
    (tmp_path / "extra.cuh").write_text("\n")
    others["new header"] = _key(tmp_path)
    keys = [base, *others.values()]
    assert len(set(keys)) == len(keys), others


def test_key_fields_are_unambiguous():
    # the same bytes split differently between fields must not collide
    a = kc.cache_key("ab", [], ["c"], "sm_90", "t")
    b = kc.cache_key("a", [], ["bc"], "sm_90", "t")
    c = kc.cache_key("ab", [("x", b"")], ["c"], "sm_90", "t")
    assert len({a, b, c}) == 3


def test_toolchain_id_follows_the_nvcc_file(tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_bytes(b"#!/bin/sh\n")
    first = kc.toolchain_id(str(nvcc), (13, 0, 0))
    assert kc.toolchain_id(str(nvcc), (13, 0, 0)) == first
    st = nvcc.stat()
    os.utime(nvcc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert kc.toolchain_id(str(nvcc), (13, 0, 0)) != first  # reinstalled toolkit
    assert kc.toolchain_id(str(nvcc), (13, 1, 0)) != kc.toolchain_id(str(nvcc), (13, 0, 0))
    assert "missing" in kc.toolchain_id(None, 0)


def test_miss_builds_and_stores_hit_does_not_build(tmp_path):
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"\x7fELF cubin bytes"

    assert kc.cached(tmp_path, "k1", build) == b"\x7fELF cubin bytes"
    assert kc.cached(tmp_path, "k1", build) == b"\x7fELF cubin bytes"
    assert len(builds) == 1
    assert kc.read(tmp_path / "k1.cubin") == b"\x7fELF cubin bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["k1.cubin"]  # no temporary left behind


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one bit flipped in the payload
        lambda b: b"garbage",  # another format
        lambda b: b"",  # empty
        lambda b: b[: len(kc.FORMAT) + 32],  # header only
    ],
)
def test_corrupted_file_is_ignored_and_rebuilt(tmp_path, damage):
    path = tmp_path / "k.cubin"
    kc.write(path, b"good cubin")
    path.write_bytes(damage(path.read_bytes()))
    assert kc.read(path) is None
    assert kc.cached(tmp_path, "k", lambda: b"rebuilt cubin") == b"rebuilt cubin"
    assert kc.read(path) == b"rebuilt cubin"


def test_unwritable_folder_still_returns_the_build(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    assert kc.cached(blocker / "sub", "k", lambda: b"cubin") == b"cubin"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKER_ORCD_KERNEL_CACHE", str(tmp_path / "override"))
    assert kc.cache_dir() == tmp_path / "override"
    monkeypatch.delenv("WORKER_ORCD_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kc.cache_dir() == tmp_path / "xdg" / "worker-orcd" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kc.cache_dir() == tmp_path / "home" / ".cache" / "worker-orcd" / "kernels"


def test_the_real_kernel_folder_has_headers_in_its_keys():
    names = [name for name, _ in kc.headers(KERNEL_DIR)]
    assert "ggml_blocks.cuh" in names and "pdl.cuh" in names
    src = kernel_sources()[0].read_text()
    assert _key(KERNEL_DIR, source=src, options=NVCC_OPTIONS) != _key(
        KERNEL_DIR, source=src, options=(*NVCC_OPTIONS, "-DX=1")
    )


@pytest.mark.gpu
def test_warm_load_runs_no_compiler(cuda_ctx, monkeypatch, tmp_path):
    import pycuda.compiler

    from cuda import compile as cc

    monkeypatch.setenv("WORKER_ORCD_KERNEL_CACHE", str(tmp_path))
    cold = cc.cubin("elementwise.cu", defines={"CACHE_TEST": 1})
    assert len(list(tmp_path.glob("*.cubin"))) == 1
    cc._cubins.clear()  # as a new process would start

    def no_nvcc(*args, **kwargs):
        raise AssertionError("nvcc ran on a warm cache")

    monkeypatch.setattr(pycuda.compiler, "compile", no_nvcc)
    assert cc.cubin("elementwise.cu", defines={"CACHE_TEST": 1}) == cold
    module = cc.load_module("elementwise.cu", defines={"CACHE_TEST": 1})
    assert module.get_function("add_inplace") is not None


@pytest.mark.gpu
def test_prefetch_builds_in_parallel_into_the_cache(cuda_ctx, monkeypatch, tmp_path):
    from cuda import compile as cc

    monkeypatch.setenv("WORKER_ORCD_KERNEL_CACHE", str(tmp_path))
    specs = [("norm.cu", {"CACHE_TEST": 2}), ("rope.cu", {"CACHE_TEST": 2})]
    cc.prefetch(specs)
    assert len(list(tmp_path.glob("*.cubin"))) == 2
    for filename, defines in specs:  # the same bytes the loaders will use, from memory now
        assert cc.cubin(filename, defines=defines) == kc.read(
            tmp_path / f"{_real_key(filename, defines)}.cubin"
        )


def _real_key(filename: str, defines: dict) -> str:
    from cuda import compile as cc

    options = [*NVCC_OPTIONS, *cc._define_options(defines)]
    source = (KERNEL_DIR / filename).read_text()
    return kc.cache_key(source, kc.headers(KERNEL_DIR), options, cc._arch(), cc._toolchain())
