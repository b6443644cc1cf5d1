#!/usr/bin/env bash
# Pack llama.cpp's source (the copy inside the llama-cpp-python sdist) small enough to carry to
# the GPU machine (one call carries at most 64 MiB in all), for bench/bench_gpu_worker.py
# --llama-cpp: the build there makes only `llama-bench` with the CUDA backend.
#
#   tools/pack_llama_cpp.sh [SDIST.tar.gz]      # default: pip downloads the latest sdist
#
# Writes .device-kit/llama-src/llama.cpp.tar.gz (+ VERSION). .device-kit/ is git-ignored; carry
# ".device-kit/llama-src" in the call that builds (bench/llama_cpp.py knows the cmake flags).
#
# What is left out, and why that is safe for that build:
#   models/, docs/, media/, benches/    vocab test files, documentation, images, results (~115 MB)
#   gguf-py/, conversion/, convert_*.py Python model converters; the C++ build never reads them
#   tests/, examples/, pocs/            off: -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
#   tools/ui, tools/server, tools/cli    off: -DLLAMA_BUILD_SERVER=OFF (the web UI is 8.5 MB)
#   ggml/src/ggml-<other backends>       added by cmake only when GGML_<BACKEND>=ON; we keep cpu,
#                                        cuda (and blas, tiny) -- hip/musa reuse cuda's sources
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$repo_root/.device-kit/llama-src"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sdist=${1:-}
if [ -z "$sdist" ]; then
  python3 -m pip download --no-deps --no-binary :all: llama-cpp-python -d "$work/dl" >&2
  sdist=$(ls "$work"/dl/llama_cpp_python-*.tar.gz)
fi
version=$(basename "$sdist" .tar.gz | sed 's/^llama_cpp_python-//')

tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "no vendor/llama.cpp in $sdist" >&2; exit 1; }

cd "$src"
rm -rf models docs media benches gguf-py conversion convert_*.py tests examples pocs \
  tools/ui tools/server tools/cli .github
for backend in ggml/src/ggml-*/; do
  case "$(basename "$backend")" in
    ggml-cpu | ggml-cuda | ggml-blas) ;;
    *) rm -rf "$backend" ;;
  esac
done

mkdir -p "$dest"
tar -C "$work/llama_cpp_python-$version/vendor" -czf "$dest/llama.cpp.tar.gz" llama.cpp
echo "llama-cpp-python $version (vendor/llama.cpp)" > "$dest/VERSION"
ls -l "$dest" >&2
