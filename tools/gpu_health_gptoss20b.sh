#!/usr/bin/env bash
# On the GPU machine, after bench/bench_gpt_oss.py has written the synthetic gpt-oss-20b file:
# a real worker serves it and its own GET /health is recorded (issue 14, item 5: "/health shows
# quant_kind MXFP4 and resident"; the bench reports the engine's fields, not the HTTP answer).
#   tools/gpu_health_gptoss20b.sh [MODEL] [SECONDS]   (default /tmp/gpt-oss-20b-synth.gguf, 240;
#   BACKEND=cpu with the tiny fixture is the dry run that checks the script itself)
# Writes $out/health-gptoss20b.json (the last /health answer) and the worker's log beside it;
# exit 0 only when /health said ready with quant_kind MXFP4 and resident true.
set -uo pipefail
model=${1:-/tmp/gpt-oss-20b-synth.gguf}
limit=${2:-240}
out=${OUT:-/tmp/gpu-health-gptoss20b}
port=${PORT:-8097}
mkdir -p "$out"
[ -f "$model" ] || { echo "no $model: run bench/bench_gpt_oss.py first (it writes the file)"; exit 2; }
# one slot at the bench's context, so vram_bytes_used is comparable with the bench's figure
timeout "$limit" python3 -m worker_orcd --model "$model" --backend "${BACKEND:-cuda}" --port "$port" \
    --max-batch 1 --max-context 4096 --worker-id gptoss20b >"$out/worker-gptoss20b.log" 2>&1 &
worker=$!
status=none
for _ in $(seq 1 "$limit"); do
    if curl -s -o "$out/health-gptoss20b.json" "localhost:$port/health"; then
        status=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' \
            "$out/health-gptoss20b.json" 2>/dev/null || echo unreadable)
        [ "$status" = ready ] && break
    fi
    kill -0 "$worker" 2>/dev/null || break
    sleep 1
done
cat "$out/health-gptoss20b.json"; echo
curl -s -X POST "localhost:$port/shutdown" >/dev/null
wait "$worker"
echo "worker exit $?"
python3 - "$out/health-gptoss20b.json" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))
ok = h.get("status") == "ready" and h.get("quant_kind") == "MXFP4" and h.get("resident") is True
print(f"status {h.get('status')}, quant_kind {h.get('quant_kind')}, resident {h.get('resident')}, "
      f"vram_bytes_used {h.get('vram_bytes_used')}, tokenizer_kind {h.get('tokenizer_kind')}: "
      f"{'OK' if ok else 'NOT OK'}")
sys.exit(0 if ok else 1)
EOF
