# Sourced by the GPU verification scripts: `step NAME SECONDS CMD...` runs CMD bounded by
# SECONDS, keeps its whole log in $out/NAME.txt and shows the tail.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "== $name: exit $? in $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$out/$name.txt"
}
