#!/usr/bin/env bash
# The second GPU session of 2026-12-02, on main after the merges of rel3, openai, batch +
# batchcuda and gptoss2, in one call (SmolLM2's parts carried just before, as
# tools/gpu_session_models.sh does). Every step is bounded, and all of them by one overall
# budget (BUDGET_S, default 330 s): a step gets what is left of it. Priorities, in order:
#   1. the pool's GPU tests and preload bench (issue 12), with the SmolLM2 file as a file: ref
#   2. /v1 streaming beside /execute on SmolLM2 (issue 11)
#   3. the CUDA engine on slots: the batch tests and the one-slot engine tests (issue 13, and
#      the regression check of issue 8's engine after the merge)
#   4. the M1 suite on SmolLM2, with fewer samples than its defaults (issue 9)
#   5. gpt-oss and phi3 on the engine vs transformers' logits (issue 14)
# Logs come back as $OUT/final-logs.tgz (gpu_steps.sh: logs_back).
set -uo pipefail
models=/root/models
smol=$models/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONUNBUFFERED=1 TAIL=${TAIL:-14} WORKER_ORCD_MODELS_DIR="$models"
export WORKER_ORCD_MODEL="$smol" WORKER_ORCD_TEST_MODEL="$smol"
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
logs_back final
pt="python3 -m pytest -q -p no:cacheprovider -rfEs"
t_end=$((SECONDS + ${BUDGET_S:-330}))
bounded() {  # NAME LIMIT CMD...: `step`, cut to what is left of the budget
    local name=$1 limit=$2 left=$((t_end - SECONDS))
    shift 2
    if [ "$left" -lt 10 ]; then
        echo "== $name: skipped (budget spent)"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    step "$name" "$limit" "$@"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
# shellcheck disable=SC2086  # $pt is a command line
bounded tests-pool 45 env WORKER_ORCD_TEST_BACKEND=cuda $pt -s tests/pool/test_pool_haiku.py \
    tests/pool/test_inventory.py
bounded pool-preload 30 python3 bench/bench_pool_preload.py --backend cuda --rounds 5 \
    --model-ref "file:$smol"
bounded openai 60 python3 bench/bench_openai_stream.py --backend cuda --model "$smol" \
    --tokens 256 --repeats 3 --deadline-s 50 --out "$out"
# shellcheck disable=SC2086
bounded tests-slots 110 $pt -x tests/cuda/test_engine_batch.py tests/cuda/test_engine_synthetic.py \
    tests/cuda/test_engine_qwen2.py tests/cuda/test_engine_gemma3.py
bounded bench-smollm2 20 python3 bench/bench_cuda.py --model "$smol" --reps 3
bounded m1-suite 150 python3 bench/m1_suite.py --backend cuda --model "$smol" --out "$out" \
    --ttft-requests 20 --cancel-samples 10 --disconnect-samples 6 --itl-runs 2
# shellcheck disable=SC2086
bounded tests-gpt-oss 70 $pt -s tests/cuda/test_engine_reference.py
echo "== logs in $out"
