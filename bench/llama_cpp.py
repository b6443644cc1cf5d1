"""Build llama.cpp's `llama-bench` and `llama-batched-bench` (CUDA) on the GPU machine, run them.

    python3 bench/llama_cpp.py build SRC BUILD_DIR     # ~4 min on 16 cores; prints the binary
    python3 bench/llama_cpp.py run BUILD_DIR MODEL     # tg128, tg512, pp512 with -fa 1 -ngl 99
    python3 bench/llama_cpp.py batched BUILD_DIR MODEL # prompt 128, gen 128, -npl 1,4,16,64

SRC is what `tools/pack_llama_cpp.sh` wrote (the folder holding llama.cpp.tar.gz, or the tarball
itself) or an unpacked llama.cpp source tree. Only the `llama-bench` and `llama-batched-bench`
targets (`TARGETS`) are built, for sm_90
only, without the server, tests or examples (the packed source lacks them), and without network
access (no curl/OpenSSL, no NCCL). `bench/bench_gpu_worker.py --llama-cpp BUILD_DIR` uses `run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_CUDA=ON",
    "-DCMAKE_CUDA_ARCHITECTURES=90",  # H100/H200 only: one architecture halves the build time
    "-DGGML_NATIVE=ON",  # host code tuned for the machine it runs on, as a user's build would be
    "-DGGML_CUDA_NCCL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)


TARGETS = ("llama-bench", "llama-batched-bench")


def find_llama_bench(build_dir: Path, name: str = "llama-bench") -> Path | None:
    """The `name` binary under a build folder (or the binary itself), if there is one."""
    build_dir = Path(build_dir)
    own = [build_dir] if build_dir.name == name else []
    for candidate in (
        *own,
        build_dir / "bin" / name,
        build_dir / "build" / "bin" / name,
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _source_tree(src: Path, work: Path) -> Path:
    """An unpacked llama.cpp tree: `src` itself, or the packed tarball extracted under `work`."""
    src = Path(src)
    if (src / "CMakeLists.txt").is_file():
        return src
    tarball = src / "llama.cpp.tar.gz" if src.is_dir() else src
    if not tarball.is_file():
        raise FileNotFoundError(f"no llama.cpp source at {src} (run tools/pack_llama_cpp.sh)")
    with tarfile.open(tarball) as tar:
        tar.extractall(work, filter="data")
    tree = work / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        raise FileNotFoundError(f"{tarball} does not hold llama.cpp/CMakeLists.txt")
    return tree


def build(src: Path, build_dir: Path, *, jobs: int | None = None, log=sys.stderr) -> Path:
    """Configure and build `TARGETS`; returns llama-bench. Output of cmake goes to `log`."""
    build_dir = Path(build_dir)
    found = find_llama_bench(build_dir)
    if found is not None and all(find_llama_bench(build_dir, t) for t in TARGETS):
        return found
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not installed on this machine")
    build_dir.mkdir(parents=True, exist_ok=True)
    tree = _source_tree(src, build_dir)
    jobs = jobs or os.cpu_count() or 4
    generator = ("-G", "Ninja") if shutil.which("ninja") else ()
    t0 = time.perf_counter()
    configure = ["cmake", "-S", str(tree), "-B", str(build_dir / "build"), *generator, *CMAKE_FLAGS]
    subprocess.run(configure, check=True, stdout=log, stderr=subprocess.STDOUT)
    t1 = time.perf_counter()
    compile_ = [
        "cmake",
        "--build",
        str(build_dir / "build"),
        "-j",
        str(jobs),
        "--target",
        *TARGETS,
    ]
    subprocess.run(compile_, check=True, stdout=log, stderr=subprocess.STDOUT)
    t2 = time.perf_counter()
    print(
        f"{', '.join(TARGETS)} built: configure {t1 - t0:.0f} s, compile {t2 - t1:.0f} s",
        file=log,
        flush=True,
    )
    found = find_llama_bench(build_dir)
    if found is None:
        raise RuntimeError(f"the build finished but no llama-bench is under {build_dir}")
    return found


def run(
    build_dir: Path,
    model: Path,
    *,
    n_prompt: tuple[int, ...] = (512,),
    n_gen: tuple[int, ...] = (128, 512),
    reps: int = 5,
    flash_attn: bool = True,
    timeout_s: float = 300.0,
) -> dict:
    """llama-bench's JSON rows, keyed "pp512" / "tg128" / ...: tokens/s mean and stddev."""
    binary = find_llama_bench(Path(build_dir))
    if binary is None:
        raise FileNotFoundError(
            f"no llama-bench under {build_dir} (python3 bench/llama_cpp.py build)"
        )
    cmd = [
        str(binary), "-m", str(model), "-ngl", "99", "-fa", "1" if flash_attn else "0",
        "-p", ",".join(map(str, n_prompt)), "-n", ",".join(map(str, n_gen)),
        "-r", str(reps), "-o", "json",
    ]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout_s)
    rows = json.loads(done.stdout)
    tests = {}
    for row in rows:
        # llama-bench runs each -p value with no generation and each -n value with no prompt
        name = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        tests[name] = {"tokens_per_s": row["avg_ts"], "stddev": row["stddev_ts"]}
    first = rows[0] if rows else {}
    return {
        "command": " ".join(cmd),
        "build_commit": first.get("build_commit"),
        "build_number": first.get("build_number"),
        "gpu_info": first.get("gpu_info"),
        "flash_attn": first.get("flash_attn"),
        "reps": reps,
        "tests": tests,
    }


def run_batched(
    build_dir: Path,
    model: Path,
    *,
    n_prompt: int = 128,
    n_gen: int = 128,
    parallel: tuple[int, ...] = (1, 4, 16, 64),
    timeout_s: float = 600.0,
) -> dict:
    """llama-batched-bench: each of B sequences its own prompt of `n_prompt` tokens, then
    `n_gen` tokens each; rows keyed by B: aggregate decode tokens/s (S_TG = B * TG / T_TG)."""
    binary = find_llama_bench(Path(build_dir), "llama-batched-bench")
    if binary is None:
        raise FileNotFoundError(
            f"no llama-batched-bench under {build_dir} (python3 bench/llama_cpp.py build)"
        )
    n_kv = max(parallel) * (n_prompt + n_gen)
    cmd = [
        str(binary), "-m", str(model), "-ngl", "99", "-c", str(n_kv), "-b", "2048",
        "-ub", "512", "-npp", str(n_prompt), "-ntg", str(n_gen),
        "-npl", ",".join(map(str, parallel)),
    ]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout_s)
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        if len(cells) == 10 and cells[0].isdigit():
            pp, tg, b = (int(c) for c in cells[:3])
            rows[b] = {
                "pp": pp,
                "tg": tg,
                "prefill_tokens_per_s": float(cells[5]),
                "decode_s": float(cells[6]),
                "decode_tokens_per_s": float(cells[7]),
            }
    if not rows:
        raise RuntimeError(f"no result rows in llama-batched-bench's output:\n{done.stdout}")
    return {"command": " ".join(cmd), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="configure and build llama-bench")
    b.add_argument("src", type=Path)
    b.add_argument("build_dir", type=Path)
    b.add_argument("-j", "--jobs", type=int, default=None)
    r = sub.add_parser("run", help="run llama-bench tg128/tg512/pp512 and print JSON")
    r.add_argument("build_dir", type=Path)
    r.add_argument("model", type=Path)
    r.add_argument("--reps", type=int, default=5)
    m = sub.add_parser("batched", help="run llama-batched-bench (pp 128, tg 128) and print JSON")
    m.add_argument("build_dir", type=Path)
    m.add_argument("model", type=Path)
    m.add_argument("--npl", default="1,4,16,64")
    args = parser.parse_args(argv)
    if args.verb == "build":
        print(build(args.src, args.build_dir, jobs=args.jobs, log=sys.stdout))
    elif args.verb == "batched":
        npl = tuple(int(n) for n in args.npl.split(","))
        print(json.dumps(run_batched(args.build_dir, args.model, parallel=npl), indent=2))
    else:
        print(json.dumps(run(args.build_dir, args.model, reps=args.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
