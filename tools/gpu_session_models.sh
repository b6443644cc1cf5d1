#!/usr/bin/env bash
# The GPU session of 2026-12-02 for issues 8, 9 and 12, in calls made back to back on one warm
# machine (each call starts with `source .device-kit/on-device.sh`):
#   tools/gpu_session_models.sh start     llama.cpp's llama-bench and llama-batched-bench built in
#                                         the background (setsid; ~6.5 min on 16 cores) into
#                                         /root/llama-build, while the model parts are carried
#   tools/gpu_session_models.sh verify    tools/gpu_verify_families.sh on the real files
#   tools/gpu_session_models.sh speed     bench/bench_gpu_worker.py (engine, llama-bench on the
#                                         same file, HTTP, TTFT, load) for Qwen2.5 and Gemma 3;
#                                         llama-bench and bench_cuda.py for SmolLM2
#   tools/gpu_session_models.sh m1        the M1 suite and the /metrics scrape cost on SmolLM2, the
#                                         issue-9 tests on cuda, the pool's GPU tests and preload
#                                         bench; the llama.cpp binaries packed into $OUT
# Every step is bounded (tools/gpu_steps.sh); each call's logs come back as $OUT/NAME-logs.tgz
# (at most 8 files come back from a call).
set -uo pipefail
models=/root/models
qwen=$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
gemma=$models/gemma-3-270m-q4_k_m.gguf
smol=$models/SmolLM2-135M-Instruct.Q4_1.gguf
llama=/root/llama-build
export PYTHONUNBUFFERED=1 TAIL=${TAIL:-30} WORKER_ORCD_MODELS_DIR="$models"
# shellcheck source=tools/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
logs_back "${1:-none}"
pt="python3 -m pytest -q -p no:cacheprovider -rfEs"

wait_llama() {  # the background build, bounded: its binaries or a clear failure
    local t0=$SECONDS
    while [ ! -f "$llama/done" ] && [ $((SECONDS - t0)) -lt "${1:-240}" ]; do sleep 5; done
    tail -n 3 "$llama/build.log"
    [ -x "$llama/build/bin/llama-bench" ]
}

case "${1:-}" in
start)
    mkdir -p "$llama"
    cp -r .device-kit/llama-src /root/llama-src  # carried paths go before the next call
    setsid nohup bash -c "python3 bench/llama_cpp.py build /root/llama-src $llama -j 14 \
        && cmake --build $llama/build -j 14 --target llama-batched-bench; touch $llama/done" \
        >"$llama/build.log" 2>&1 </dev/null &
    echo "llama.cpp build started (log $llama/build.log)"
    ;;
verify)
    OUT=$out T_ENGINE=170 T_MODELS=120 T_E2E=150 T_E2E_G=100 T_BENCH=45 \
        bash tools/gpu_verify_families.sh "$models"
    ;;
speed)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/card.txt"
    with_llama=(--llama-cpp "$llama")
    wait_llama 200 || { echo "llama.cpp is not built: no llama.cpp figures"; with_llama=(); }
    for m in "$qwen" "$gemma"; do
        name=$(basename "$m" .gguf)
        step "worker-$name" 200 python3 bench/bench_gpu_worker.py --model "$m" "${with_llama[@]}" \
            --reps 3 --stream-tokens 256 --ttft-requests 30 --cancel-samples 12 \
            --health-seconds 2 --peak-gbps 4800 --json "$out/worker-$name.json"
    done
    step llama-smollm2 60 python3 bench/llama_cpp.py run "$llama" "$smol" --reps 5
    step bench-smollm2 60 python3 bench/bench_cuda.py --model "$smol" --reps 5
    ;;
m1)
    export WORKER_ORCD_MODEL="$smol"
    step m1-suite 200 python3 bench/m1_suite.py --backend cuda --model "$smol" --out "$out"
    step scrape 80 python3 bench/bench_metrics_scrape.py --backend cuda --model "$smol" \
        --tokens 512 --repeats 5 --json "$out/scrape.json"
    # shellcheck disable=SC2086  # $pt is a command line
    step tests-m1 120 env WORKER_ORCD_TEST_BACKEND=cuda WORKER_ORCD_TEST_MODEL="$smol" \
        $pt tests/test_reproducibility.py tests/test_cli_worker.py tests/cuda/test_load_checks.py
    # shellcheck disable=SC2086
    step tests-pool 90 env WORKER_ORCD_TEST_BACKEND=cuda $pt -s tests/pool/test_pool_haiku.py \
        tests/pool/test_inventory.py
    step pool-preload 60 python3 bench/bench_pool_preload.py --backend cuda --rounds 5
    if [ -f "$llama/done" ]; then  # for a later session: carried back, no second build
        tar -C "$llama/build" -cJf /tmp/llama-bin.tar.xz bin \
            $(cd "$llama/build" && find . -name '*.so*' -printf '%P\n')
        split -b 15M -d -a 1 /tmp/llama-bin.tar.xz "$back/llama-bin.tar.xz."
        ls -l "$back"/llama-bin.tar.xz.*
    fi
    ;;
*)
    echo "usage: $0 start|verify|speed|m1" >&2
    exit 2
    ;;
esac
