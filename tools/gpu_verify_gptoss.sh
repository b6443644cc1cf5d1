#!/usr/bin/env bash
# On the GPU machine: gpt-oss and phi3 on the CUDA engine (branch gptoss2, issue 14), each step
# bounded (~4 min in all, most of it a cold nvcc cache and writing the 12 GB file).
#   tools/gpu_verify_gptoss.sh [LLAMA_BENCH]      (logs and bench JSON into $OUT)
#   1. kernels: attention with sinks, MoE routing / gate|up / down for every type, MXFP4
#      products at gpt-oss-20b's shapes (tests/cuda/test_gpt_oss_kernels.py)
#   2. the engine on the transformers fixtures, gpt-oss and phi3: graph, fused eager, unfused,
#      every position within 1e-2 of transformers (tests/cuda/test_engine_reference.py)
#   3. bench/bench_gpt_oss.py: the synthetic gpt-oss-20b file (written to /tmp), its VRAM vs
#      W-1823, quant_kind and resident, decode tokens/s; llama-bench on it when LLAMA_BENCH (the
#      binary or its build folder) is given
set -uo pipefail
out=${OUT:-/tmp/gpu-verify-gptoss}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TAIL=25
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
pt="python3 -m pytest -q -p no:cacheprovider -rfEs"
# shellcheck disable=SC2086  # $pt is a command line
step tests-kernels "${T_KERNELS:-150}" $pt tests/cuda/test_gpt_oss_kernels.py
# shellcheck disable=SC2086
step tests-engine "${T_ENGINE:-120}" $pt -s tests/cuda/test_engine_reference.py
llama=()
[ -n "${1:-}" ] && llama=(--llama-bench "$1")
step bench-gpt-oss "${T_BENCH:-170}" python3 bench/bench_gpt_oss.py --budget-s 150 \
    --json "$out/bench_gpt_oss.json" "${llama[@]}"
echo "== logs in $out"
