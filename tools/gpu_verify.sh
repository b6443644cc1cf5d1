#!/usr/bin/env bash
# On the GPU machine (after `source .device-kit/on-device.sh`, model at $1): every GPU test, the
# end-to-end and reproducibility tests on the cuda backend, both GPU benchmarks, the M1 suite and
# the metrics-scrape benchmark; full logs into $OUT, each step bounded so one stuck step cannot
# eat the others' time.
# Set LLAMA=<packed llama.cpp source or build dir> to run llama-bench in the same run.
set -uo pipefail
model=${1:-/root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
out=${OUT:-/tmp/gpu-verify}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WORKER_ORCD_MODEL="$model" WORKER_ORCD_TEST_MODEL="$model" \
    WORKER_ORCD_TEST_BACKEND=cuda
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
# The GPU machine sets PYTHONDONTWRITEBYTECODE and the kit installs with --no-compile; a normal
# pip install leaves bytecode, so compile once (0.6 s) before anything measures start-up time.
python3 -m compileall -q -j0 /tmp/site . >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
step tests-cuda "${T_CUDA:-200}" python3 -m pytest -q -p no:cacheprovider -rfE tests/cuda
step tests-e2e-cuda "${T_E2E:-240}" python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/e2e tests/test_cli_worker.py tests/test_reproducibility.py
step bench-cuda "${T_BENCH:-60}" python3 bench/bench_cuda.py --model "$model" --reps 3
step bench-worker "${T_WORKER:-200}" python3 bench/bench_gpu_worker.py --model "$model" \
    --json "$out/bench.json" ${LLAMA:+--llama-cpp "$LLAMA"}
step m1-suite "${T_M1:-400}" python3 bench/m1_suite.py --backend cuda --model "$model" --out "$out"
step bench-scrape "${T_SCRAPE:-120}" python3 bench/bench_metrics_scrape.py --backend cuda \
    --model "$model" --tokens 512 --repeats 5 --json "$out/scrape.json"
