# shellcheck shell=bash
# Sourced by the benchmark scripts: a scratch directory and the processes
# started into it, all stopped (TERM, then KILL) and removed on exit.
#   bench_scratch PREFIX   sets WORK (with WORK/tmp), creates OUT, arms the trap
#   STARTED+=($!)          after starting a process in the background

bench_scratch() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    mkdir -p "$WORK/tmp" "$OUT"
    STARTED=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    disown -a 2>/dev/null || true
    local p
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
