# Sourced by the GPU verification scripts: `step NAME SECONDS CMD...` runs CMD bounded by
# SECONDS, keeps its whole log in $out/NAME.txt and shows the tail; `logs_back NAME` sends the
# logs to /tmp/gpu-session/NAME and packs them as $OUT/NAME-logs.tgz when the script exits (at
# most 8 files come back from a device call).
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "== $name: exit $? in $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$out/$name.txt"
}

logs_back() {
    out=/tmp/gpu-session/$1
    back=${OUT:-/tmp/gpu-session-back}
    mkdir -p "$out" "$back"
    # shellcheck disable=SC2064  # expanded now, on purpose
    trap "tar -czf '$back/$1-logs.tgz' -C '$out' ." EXIT
}
