#!/usr/bin/env bash
# Where a proxy's CPU time per request goes: user space or the kernel.
# stickyd (local path) and HAProxy (cookie pinned) run pinned to PROXY_CPU,
# the backend and wrk to LOAD_CPU, as in tests/load/bench.sh. Each round
# runs wrk (-t1 -c50 -dDURATION) against each proxy in turn and reads the
# proxy's utime and stime from /proc/PID/stat before and after.
#
#   tests/load/bench/cpu_split.sh            (ROUNDS=3 DURATION=5)
#
# Prints one line per run (req/s, user and system µs per request) and writes
# them to $OUT/cpu_split.csv (default benchmarks/results). Uses the configs of
# tests/load/bench.sh; needs haproxy, nginx, wrk. STICKYDTEST_BIN as there.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/../../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-$ROOT/benchmarks/results}
BASE_PORT=${BASE_PORT:-18600}
BACKEND_PORT=$((BASE_PORT + 1))
SD_PORT=$((BASE_PORT + 10))
SD_ADMIN=$((BASE_PORT + 11))
HAPROXY_PORT=$((BASE_PORT + 20))
STICKYDTEST_BIN=${STICKYDTEST_BIN:-$ROOT/target/release/stickyd}
[[ -x "$STICKYDTEST_BIN" ]] || { echo "no stickyd at $STICKYDTEST_BIN (cargo build --release)" >&2; exit 1; }
for tool in haproxy nginx wrk taskset; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (tests/load/bench.sh installs it)" >&2; exit 1; }
done

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-cpu

for f in backend.nginx.conf haproxy.cfg; do
    sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        "$BENCH/$f" >"$WORK/$f"
done
wait_port() { local _i; for _i in $(seq 1 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
STARTED+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
STARTED+=("$HAPROXY_PID")
taskset -c "$PROXY_CPU" env STICKYD_LISTEN="127.0.0.1:$SD_PORT" STICKYD_ADMIN_LISTEN="127.0.0.1:$SD_ADMIN" \
    STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" STICKYD_POD_NAME=pod-a \
    STICKYD_ENDPOINTS="static:pod-a=127.0.0.1:$SD_PORT" STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn STICKYD_DRAIN_SECONDS=0 \
    "$STICKYDTEST_BIN" run 2>"$WORK/stickyd.err" &
SD_PID=$!
STARTED+=("$SD_PID")
wait_port 127.0.0.1 "$HAPROXY_PORT"
wait_port 127.0.0.1 "$SD_PORT"
COOKIE=$(cookie_for pod-a)

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
measure() { # name pid url cookie round
    local u0 s0 u1 s1 rps
    read -r u0 s0 < <(ticks "$2")
    rps=$(taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${DURATION}s" -H "Cookie: $4" "$3" | awk '/Requests\/sec/ {print $2}')
    read -r u1 s1 < <(ticks "$2")
    python3 - "$1" "$5" "$rps" "$((u1 - u0))" "$((s1 - s0))" "$HZ" "$DURATION" <<'EOF'
import sys
name, rnd, rps, du, ds, hz, dur = sys.argv[1:]
reqs = float(rps) * float(dur)
user = int(du) / int(hz) * 1e6 / reqs
sys_ = int(ds) / int(hz) * 1e6 / reqs
print(f"{name},{rnd},{float(rps):.0f},{user:.2f},{sys_:.2f},{user + sys_:.2f},{sys_ / (user + sys_):.2f}")
EOF
}

echo "proxy,round,req_s,user_us_per_req,sys_us_per_req,total_us_per_req,kernel_share" | tee "$OUT/cpu_split.csv"
for r in $(seq 1 "$ROUNDS"); do
    measure haproxy "$HAPROXY_PID" "http://127.0.0.1:$HAPROXY_PORT/" "SRV=s1" "$r" | tee -a "$OUT/cpu_split.csv"
    measure stickyd-local "$SD_PID" "http://127.0.0.1:$SD_PORT/" "stickyd=$COOKIE" "$r" | tee -a "$OUT/cpu_split.csv"
done
