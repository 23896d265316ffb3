#!/usr/bin/env bash
# Memory under load, stickyd beside HAProxy in one run.
#
#   tests/load/bench/memory.sh
#
# nginx (the backend) and wrk run on LOAD_CPU; stickyd (one worker, every
# request carrying a cookie that names the local pod) and HAProxy (cookie
# insert) on PROXY_CPU. For each round, each count of active keep-alive
# connections in CONNS and each proxy (the order rotates per round), a fresh
# proxy process is started, its idle RSS read, and wrk keeps that many
# connections busy for HOLD seconds; VmRSS is sampled every 0.5 s from the
# second second on and the median kept. AFTER seconds after wrk ended the RSS
# is read again (does the memory come back?), and the process is stopped. A
# fresh process per spike keeps one spike's high-water mark out of the next.
# Per-connection KiB is (RSS under load - RSS idle) / connections.
#
# STICKYDTEST_BINS="name=path name=path ..." compares several stickyd binaries
# (allocators, targets) in the same run; each name's STICKYDTEST_ENV_<name> is
# added to its environment (e.g. STICKYDTEST_ENV_glibc_trim="GLIBC_TUNABLES=...").
#
# HEAPTRACK=N: instead, run stickyd under heaptrack for one spike of N
# connections and print heaptrack_print's peak-memory report (apt-get install
# heaptrack).
#
# Environment (all optional): CONNS="1000 2000 4000" HOLD=8 ROUNDS=3 AFTER=20
#   PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18600 OUT=benchmarks/results
#   STICKYDTEST_BIN=path (default target/release/stickyd) STICKYDTEST_ENV="VAR=value ..."
#
# Not part of CI. Loopback only; stops everything it started on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BENCH="$ROOT/tests/load/bench"
CONNS=${CONNS:-1000 2000 4000}
HOLD=${HOLD:-8}
ROUNDS=${ROUNDS:-3}
AFTER=${AFTER:-20}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18600}
OUT=${OUT:-$ROOT/benchmarks/results}
HEAPTRACK=${HEAPTRACK:-}
STICKYDTEST_BIN=${STICKYDTEST_BIN:-$ROOT/target/release/stickyd}
STICKYDTEST_ENV=${STICKYDTEST_ENV:-}

BACKEND_PORT=$((BASE_PORT + 1))
HAPROXY_PORT=$((BASE_PORT + 20))
SD_PORT=$((BASE_PORT + 10))
SD_ADMIN=$((BASE_PORT + 11))

log() { printf '[memory %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
[[ -x "$STICKYDTEST_BIN" ]] || die "no stickyd at $STICKYDTEST_BIN (cargo build --release)"
for t in nginx haproxy wrk taskset; do command -v "$t" >/dev/null || die "$t is missing"; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-memory

render() { # template -> file in $WORK
    sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        "$BENCH/$1" >"$WORK/$1"
}
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on $1:$2"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }

render backend.nginx.conf; render haproxy.cfg
taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
STARTED+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"

start_stickyd() { # bin extra-env [wrapper...]
    local bin=$1 extra=$2; shift 2
    # shellcheck disable=SC2086
    taskset -c "$PROXY_CPU" env STICKYD_LISTEN="127.0.0.1:$SD_PORT" STICKYD_ADMIN_LISTEN="127.0.0.1:$SD_ADMIN" \
        STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" STICKYD_POD_NAME=pod-a \
        STICKYD_ENDPOINTS="static:pod-a=127.0.0.1:$SD_PORT" STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn \
        STICKYD_MAX_CONNECTIONS=20000 STICKYD_DRAIN_SECONDS=0 $STICKYDTEST_ENV $extra "$@" "$bin" run \
        2>>"$WORK/stickyd.err" &
    PID=$!
    STARTED+=("$PID")
    wait_port 127.0.0.1 "$SD_PORT"
}
start_haproxy() {
    taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db >>"$WORK/haproxy.log" 2>&1 &
    PID=$!
    STARTED+=("$PID")
    wait_port 127.0.0.1 "$HAPROXY_PORT"
}
stop() { # pid
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

COOKIE="stickyd=$(cookie_for pod-a)"
spike() { # port connections pid cookie -> median RSS KiB under load
    local samples=()
    taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"${HOLD}s" -H "Cookie: $4" "http://127.0.0.1:$1/" >"$WORK/wrk.out" 2>&1 &
    local w=$!
    sleep 2
    for _ in $(seq 1 $(((HOLD - 3) * 2))); do samples+=("$(rss_kib "$3")"); sleep 0.5; done
    wait "$w"
    if grep -q "Socket errors" "$WORK/wrk.out"; then log "  $(grep 'Socket errors' "$WORK/wrk.out")"; fi
    printf '%s\n' "${samples[@]}" | median
}

if [[ -n "$HEAPTRACK" ]]; then
    command -v heaptrack >/dev/null || die "heaptrack is missing (apt-get install heaptrack)"
    start_stickyd "$STICKYDTEST_BIN" "" heaptrack -o "$OUT/heap-stickyd"
    sleep 1
    log "heaptrack: $HEAPTRACK connections for ${HOLD}s"
    spike "$SD_PORT" "$HEAPTRACK" "$(pgrep -f "^$STICKYDTEST_BIN run")" "$COOKIE" >&2
    pkill -INT -f "^$STICKYDTEST_BIN run" || true
    wait "$PID" 2>/dev/null || true
    heaptrack_print -f "$OUT"/heap-stickyd*.zst --print-peaks --peak-limit 40 --print-allocators 0 \
        --print-leaks 0 --print-temporary 0 >"$OUT/heap-peaks.txt" 2>/dev/null
    log "peak consumers: $OUT/heap-peaks.txt (heaptrack --analyze $OUT/heap-stickyd.zst)"
    sed -n '/^PEAK MEMORY CONSUMERS/,$p' "$OUT/heap-peaks.txt" | grep -E '^[0-9.]+[KMG]? (peak memory )?consumed'
    exit 0
fi

BINS=${STICKYDTEST_BINS:-stickyd=$STICKYDTEST_BIN}
NAMES=()
declare -A BIN
for b in $BINS; do
    NAMES+=("${b%%=*}"); BIN[${b%%=*}]=${b#*=}
    [[ -x "${BIN[${b%%=*}]}" ]] || die "no stickyd at ${BIN[${b%%=*}]}"
done
PROXIES=("${NAMES[@]}" haproxy)
CSV="$OUT/memory-load.csv"
echo "round,connections,proxy,idle_kib,load_kib,per_conn_kib,after_kib,req_per_s" >"$CSV"
for r in $(seq 1 "$ROUNDS"); do
    for n in $CONNS; do
        # Rotate the order each round, so no proxy always runs first.
        order=()
        for i in "${!PROXIES[@]}"; do order+=("${PROXIES[$(((i + r) % ${#PROXIES[@]}))]}"); done
        for p in "${order[@]}"; do
            if [[ $p == haproxy ]]; then
                start_haproxy; port=$HAPROXY_PORT cookie="SRV=s1"
            else
                env_var="STICKYDTEST_ENV_$p"
                start_stickyd "${BIN[$p]}" "${!env_var:-}"; port=$SD_PORT cookie=$COOKIE
            fi
            sleep 1
            idle=$(rss_kib "$PID")
            kib=$(spike "$port" "$n" "$PID" "$cookie")
            rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$WORK/wrk.out")
            sleep "$AFTER"
            after=$(rss_kib "$PID")
            stop "$PID"
            per=$(awk -v a="$kib" -v b="$idle" -v n="$n" 'BEGIN {printf "%.1f", (a - b) / n}')
            echo "$r,$n,$p,$idle,$kib,$per,$after,$rps" | tee -a "$CSV" >&2
        done
    done
done
col() { awk -F, -v n="$1" -v p="$2" -v c="$3" '$2==n && $3==p {print $c}' "$CSV" | median; }
log "medians of $ROUNDS rounds:"
{
    echo "| connections | proxy | RSS idle | RSS under load | KiB per connection | RSS ${AFTER} s after | req/s |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for n in $CONNS; do
        for p in "${PROXIES[@]}"; do
            printf '| %s | %s | %.1f MiB | %.1f MiB | %s | %.1f MiB | %s |\n' "$n" "$p" \
                "$(col "$n" "$p" 4 | awk '{print $1 / 1024}')" "$(col "$n" "$p" 5 | awk '{print $1 / 1024}')" \
                "$(col "$n" "$p" 6)" "$(col "$n" "$p" 7 | awk '{print $1 / 1024}')" "$(col "$n" "$p" 8)"
        done
    done
} | tee "$OUT/memory-summary.md"
