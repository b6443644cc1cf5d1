#!/usr/bin/env bash
# The first GPU session of 2026-12-02's third working session (issues 12, 13, 14 and 8), in calls
# made back to back on one warm machine (each starts with `source .device-kit/on-device.sh`):
#   tools/gpu_session3.sh bins     the carried llama.cpp binaries (.device-kit/llama-bin parts,
#                                  H200 build of the llama-cpp-python 0.3.36 sdist) gathered in
#                                  /root/llama-parts; unpacked into /root/llama-build/build once
#                                  all three are there
#   tools/gpu_session3.sh pool     issue 12 on cuda: the pool's haiku and inventory tests and the
#                                  preload bench (SmolLM2); issue 13's baseline:
#                                  llama-batched-bench and our slots (bench_batch.py gpu) on
#                                  SmolLM2; issue 8: decode profiles and the slot engine's speed
#                                  on synthetic Qwen2.5- and Gemma 3-shaped files
#   tools/gpu_session3.sh batch    issue 13: the batched step's GPU tests, bench_batch_cuda.py
#   tools/gpu_session3.sh batch2   bench_batch.py gpu with llama-batched-bench (SmolLM2, and a
#                                  Qwen2.5-shaped synthetic file), the Qwen2.5 decode profile
#   tools/gpu_session3.sh gptoss   issue 14: tools/gpu_verify_gptoss.sh with llama-bench
# Every step is bounded (tools/gpu_steps.sh); each call's logs come back as $OUT/NAME-logs.tgz.
set -uo pipefail
models=/root/models
smol=$models/SmolLM2-135M-Instruct.Q4_1.gguf
llama=/root/llama-build
export PYTHONUNBUFFERED=1 TAIL=${TAIL:-30} WORKER_ORCD_MODELS_DIR="$models"
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
pt="python3 -m pytest -q -p no:cacheprovider -rfEs"

case "${1:-}" in
bins)
    mkdir -p /root/llama-parts
    cp -n .device-kit/llama-bin/llama-bin.tar.xz.* /root/llama-parts/ 2>/dev/null || true
    ls /root/llama-parts
    if [ "$(ls /root/llama-parts | wc -l)" -ge 3 ] && [ ! -x "$llama/build/bin/llama-bench" ]; then
        mkdir -p "$llama/build"
        cat /root/llama-parts/llama-bin.tar.xz.* | tar -xJ -C "$llama/build"
        ls "$llama/build/bin" | head
    fi
    ;;
pool)
    logs_back pool
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
    export LD_LIBRARY_PATH=$llama/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-pool 100 env WORKER_ORCD_TEST_BACKEND=cuda WORKER_ORCD_TEST_MODEL="$smol" \
        $pt -s tests/pool/test_pool_haiku.py tests/pool/test_inventory.py
    step pool-preload 70 python3 bench/bench_pool_preload.py --backend cuda --rounds 5 \
        --model-ref "file:$smol"
    step batch-smollm2 150 python3 bench/bench_batch.py gpu --model "$smol" --max-context 512 \
        --http-clients 16 --llama-batched-bench "$llama" --json "$out/batch-smollm2.json"
    for fam in qwen2 gemma3; do
        step "profile-$fam" 60 python3 bench/profile_decode.py --family "$fam" --pos 128
        step "speed-$fam" 60 python3 bench/bench_cuda.py --family "$fam" --reps 3
    done
    ;;
batch)  # issue 13: the batched decode step (decision 0028), its tests and its speed
    logs_back batch
    export LD_LIBRARY_PATH=$llama/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-batch 200 $pt tests/cuda/test_engine_batch.py tests/cuda/test_matvec_variants.py \
        tests/cuda/test_kernels_layers.py tests/cuda/test_kernels_sampling.py
    step bench-batch-cuda 130 python3 bench/bench_batch_cuda.py --families smollm2,qwen2 \
        --batches 1,4,16,64 --budget-s 110
    ;;
batch2)  # issue 13 against llama-batched-bench; issue 8's Qwen2.5 decode profile
    logs_back batch2
    export LD_LIBRARY_PATH=$llama/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    step batch-smollm2 150 python3 bench/bench_batch.py gpu --model "$smol" --max-context 512 \
        --http-clients 16 --llama-batched-bench "$llama" --json "$out/batch-smollm2.json"
    # Qwen2.5's shapes and types, random weights (llama.cpp loads the synthetic files)
    python3 tools/make_synthetic_gguf.py /tmp/qwen2-synth.gguf --family qwen2 >/dev/null
    step batch-qwen2 150 python3 bench/bench_batch.py gpu --model /tmp/qwen2-synth.gguf \
        --max-context 512 --http-clients 0 --llama-batched-bench "$llama" \
        --json "$out/batch-qwen2.json"
    step profile-qwen2 60 python3 bench/profile_decode.py --family qwen2 --pos 128
    ;;
tune)  # batched kernels retuned (bench_batch_cuda.py, invariance tests), llama-batched-bench
    # on SmolLM2- and Qwen2.5-shaped synthetic files, decode attention's keys per split
    logs_back tune
    export LD_LIBRARY_PATH=$llama/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-batch 150 $pt tests/cuda/test_engine_batch.py tests/cuda/test_matvec_variants.py
    step bench-batch-cuda 130 python3 bench/bench_batch_cuda.py --families smollm2,qwen2 \
        --batches 1,4,16,64 --budget-s 110
    for fam in smollm2 qwen2; do
        python3 tools/make_synthetic_gguf.py "/tmp/$fam-synth.gguf" --family "$fam" >/dev/null
        step "llama-batched-$fam" 120 python3 -c "import sys; sys.path.insert(0, 'bench')
import llama_cpp, json
print(json.dumps(llama_cpp.run_batched('$llama', '/tmp/$fam-synth.gguf')['rows'], indent=1))"
    done
    for keys in 32 64 128; do
        for fam in qwen2 gemma3; do
            step "split$keys-$fam" 60 python3 -c "import sys, runpy
import cuda.forward as f
f._SPLIT_KEYS = $keys
sys.argv = ['bench_cuda.py', '--family', '$fam', '--reps', '3']
runpy.run_path('bench/bench_cuda.py', run_name='__main__')"
        done
    done
    ;;
rows)  # the batched step after the grid swap: invariance, speed, where a 64-row step goes
    logs_back rows
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-batch 150 $pt tests/cuda/test_engine_batch.py
    step bench-batch-cuda 130 python3 bench/bench_batch_cuda.py --families smollm2,qwen2 \
        --batches 1,4,16,64 --budget-s 110
    for fam in smollm2 qwen2; do
        step "profile-rows64-$fam" 90 python3 bench/profile_decode.py --family "$fam" \
            --pos 128 --rows 64
    done
    # shellcheck disable=SC2086
    step tests-engine 200 $pt tests/cuda/test_engine_synthetic.py tests/cuda/test_engine_qwen2.py \
        tests/cuda/test_engine_gemma3.py tests/cuda/test_oom.py tests/cuda/test_cuda_errors.py \
        tests/cuda/test_engine_nonfinite.py tests/cuda/test_engine_mask.py
    # issue 8's load to ready on a Qwen2.5-shaped file (same shapes, types and size)
    python3 tools/make_synthetic_gguf.py /tmp/qwen2-synth.gguf --family qwen2 >/dev/null
    for mb in 16 1; do
        step "startup-qwen2-b$mb" 90 python3 bench/bench_startup.py --backend cuda \
            --model /tmp/qwen2-synth.gguf --runs 3 --max-batch "$mb" \
            --json "$out/startup-qwen2-b$mb.json"
    done
    ;;
final)  # the last call: batched step after the g hoist (tile 8 vs 16), MXFP4 kernels, gpt-oss
    # engine and bench, and a real worker's /health on the synthetic gpt-oss-20b file
    logs_back final
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-batch 150 $pt tests/cuda/test_engine_batch.py
    for tile in 8 16; do
        step "bench-batch-tile$tile" 120 env WORKER_ORCD_BATCH_TILE=$tile \
            python3 bench/bench_batch_cuda.py --families smollm2,qwen2 --batches 1,4,16,64 \
            --budget-s 100
    done
    # shellcheck disable=SC2086
    step tests-mxfp4 150 $pt tests/cuda/test_quant_kernels.py tests/cuda/test_quant_kernels_models.py \
        tests/cuda/test_matvec_variants.py tests/cuda/test_gpt_oss_kernels.py -k "MXFP4 or mxfp4 or gpt"
    # shellcheck disable=SC2086
    step tests-reference 100 $pt -s tests/cuda/test_engine_reference.py
    step bench-gpt-oss 150 python3 bench/bench_gpt_oss.py --budget-s 120 \
        --json "$out/bench_gpt_oss.json"
    step health-gptoss20b 150 env OUT="$out" bash tools/gpu_health_gptoss20b.sh \
        /tmp/gpt-oss-20b-synth.gguf 140
    ;;
gptoss)
    logs_back gptoss
    export LD_LIBRARY_PATH=$llama/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    OUT=$out T_KERNELS=150 T_ENGINE=120 T_BENCH=250 bash tools/gpu_verify_gptoss.sh \
        "$llama/build/bin/llama-bench"
    ;;
*)
    echo "usage: $0 bins|pool|batch|batch2|tune|rows|final|gptoss" >&2
    exit 2
    ;;
esac
