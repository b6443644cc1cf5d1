#!/usr/bin/env bash
# On the GPU machine: the decode matvec variants of decision 0021 in one go (~3 minutes on an
# H200 from a cold kernel cache). Logs into $OUT, each step bounded; no model file needed.
#   1. the variants' GPU tests against numpy and bitwise against each other, and the quant
#      kernel tests whose decoders they share (builds every kernel once: ~26 nvcc runs in
#      parallel, then cached for step 2)
#   2. bench_matvec_variants.py: every variant at the three models' decode shapes; its last
#      lines are the MATVEC_DEFAULTS entries that adopt the fastest; JSON in $OUT
set -uo pipefail
out=${OUT:-/tmp/gpu-matvec-variants}
mkdir -p "$out"
export OUT=$out PYTHONUNBUFFERED=1 TAIL=${TAIL:-40}
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/card.txt"
step tests-variants "${T_TESTS:-420}" python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/cuda/test_matvec_variants.py tests/cuda/test_quant_kernels.py \
    tests/cuda/test_quant_kernels_models.py tests/cuda/test_matvec_variant_table.py
step bench-variants "${T_BENCH:-170}" python3 bench/bench_matvec_variants.py
