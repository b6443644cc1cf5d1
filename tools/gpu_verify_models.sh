#!/usr/bin/env bash
# On the GPU machine: the qwen2 / gemma3 kernel work of decision 0012 in one go. Logs into $OUT,
# each step bounded. Needs no model file (synthetic models with the real shapes and types);
# with QWEN=<Qwen2.5-Coder-0.5B Q4_K_M gguf> it also benches the real file and the host side of
# HTTP streaming with its tokenizer.
#   1. the new GPU tests (kernels vs numpy, the gemma3 layer, the qwen2 synthetic engine)
#   2. every GPU test (regressions: SmolLM2's paths, both matvec builds)
#   3. kernel sums for one decode step / pp512 of both models (bench_model_kernels.py)
#   4. engine pp512 / tg128 on synthetic qwen2 and SmolLM2, SIMT vs tensor-core prefill attention
#   5. where a pp512 pass goes on synthetic qwen2 (profile_decode.py --prefill 512)
set -uo pipefail
out=${OUT:-/tmp/gpu-verify-models}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TAIL=30
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
step tests-new "${T_NEW:-300}" python3 -m pytest -q -p no:cacheprovider -rfE -s \
    tests/cuda/test_quant_kernels_models.py tests/cuda/test_kernels_gemma.py \
    tests/cuda/test_gemma3_layer.py tests/cuda/test_attention_prefill_tc.py \
    tests/cuda/test_engine_qwen2.py tests/cuda/test_kernels_sampling.py \
    tests/cuda/test_launcher_signatures.py
step tests-cuda "${T_CUDA:-400}" python3 -m pytest -q -p no:cacheprovider -rfE tests/cuda
step bench-kernels "${T_KERNELS:-150}" python3 bench/bench_model_kernels.py
step bench-qwen2 "${T_QWEN:-200}" python3 bench/bench_cuda.py --family qwen2 --reps 3 \
    --config simt:attn=simt --config tc:attn=tc
step bench-smollm2 "${T_SMOL:-120}" python3 bench/bench_cuda.py --reps 3 \
    --config simt:attn=simt --config tc:attn=tc
step profile-qwen2-prefill "${T_PROF:-120}" python3 bench/profile_decode.py --family qwen2 \
    --prefill 512
if [ -n "${QWEN:-}" ]; then
    step bench-qwen2-real "${T_QWEN:-200}" python3 bench/bench_cuda.py --model "$QWEN" --reps 3 \
        --config simt:attn=simt --config tc:attn=tc
    step http-fake-qwen2 120 python3 bench/bench_http_fake.py --model "$QWEN" --step-ms 0.9
    step http-fake-smollm2 120 python3 bench/bench_http_fake.py --step-ms 0.9
fi
