#!/usr/bin/env bash
# On the GPU machine: the CUDA engine on the model-family seam (branch cudawire: gemma3 on CUDA,
# the sampling mask, SmolLM2 / qwen2 unchanged), in one go, each step bounded (< 8 min in all).
#   tools/gpu_verify_families.sh [MODELS_DIR]     (default /root/models; logs into $OUT)
# MODELS_DIR holds the real files under their catalog names: qwen2.5-coder-0.5b-instruct-q4_k_m.gguf,
# gemma-3-270m-q4_k_m.gguf, and SmolLM2-135M-Instruct.Q4_1.gguf if carried; a missing one is
# skipped (the pytest output says so).
#   1. the engine GPU tests this work touches: gemma3 synthetic, the mask (engine and kernel),
#      qwen2 / SmolLM2 synthetic (regressions), the gemma3 layer, OOM paths (the checks that
#      need no GPU, tests/cuda/test_engine_sim.py & co., run in CI)
#   2. the real files: GPU logits vs numpy, teacher forcing vs llama.cpp (all three models),
#      and SmolLM2's older real-file test
#   3. end to end on the cuda backend: tests/e2e on Qwen2.5 (the haiku test included) and on
#      Gemma 3 (no chat template: the haiku test asks for messages, left out)
#   4. bench_cuda.py on each real file (Qwen with both prefill attentions: simt, the default,
#      and tc), after its e2e step
# Worst case (every bound reached) ~14 min; expected ~6 (e2e: ~15 worker starts per model).
set -uo pipefail
models=${1:-/root/models}
out=${OUT:-/tmp/gpu-verify-families}
mkdir -p "$out"
qwen=$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
gemma=$models/gemma-3-270m-q4_k_m.gguf
smol=$models/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONUNBUFFERED=1 TAIL=20 WORKER_ORCD_MODELS_DIR="$models"
[ -f "$smol" ] && export WORKER_ORCD_MODEL="$smol"
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
ls -l "$models" | tee "$out/models.txt"
pt="python3 -m pytest -q -p no:cacheprovider -rfEs"
# shellcheck disable=SC2086  # $pt is a command line
step tests-engine "${T_ENGINE:-200}" $pt -s tests/cuda/test_engine_gemma3.py \
    tests/cuda/test_engine_mask.py tests/cuda/test_kernels_sampling.py \
    tests/cuda/test_engine_qwen2.py tests/cuda/test_engine_synthetic.py \
    tests/cuda/test_gemma3_layer.py tests/cuda/test_oom.py
# shellcheck disable=SC2086
step tests-models "${T_MODELS:-150}" $pt -s tests/cuda/test_engine_models.py \
    tests/cuda/test_vs_reference.py
if [ -f "$qwen" ]; then  # shellcheck disable=SC2086
    step e2e-qwen-cuda "${T_E2E:-200}" env WORKER_ORCD_TEST_BACKEND=cuda \
        WORKER_ORCD_TEST_MODEL="$qwen" $pt tests/e2e
    step bench-qwen "${T_BENCH:-60}" python3 bench/bench_cuda.py --model "$qwen" --reps 3 \
        --config simt:attn=simt --config tc:attn=tc
fi
if [ -f "$gemma" ]; then  # shellcheck disable=SC2086
    step e2e-gemma-cuda "${T_E2E_G:-120}" env WORKER_ORCD_TEST_BACKEND=cuda \
        WORKER_ORCD_TEST_MODEL="$gemma" $pt tests/e2e -k "not haiku_contains"
    step bench-gemma "${T_BENCH:-60}" python3 bench/bench_cuda.py --model "$gemma" --reps 3
fi
if [ -f "$smol" ]; then
    step bench-smollm2 "${T_BENCH:-60}" python3 bench/bench_cuda.py --model "$smol" --reps 3
fi
echo "== logs in $out"
