#!/usr/bin/env bash
# The floor of the HTTP/2 stack: each server answers "ok\n" to every request
# itself (no upstream, no routing), so what it costs per request is its
# HTTP/2 server's alone:
#   haproxy  HAProxy 2.6, `bind … proto h2`, `http-request return`
#   hyper    hyper's HTTP/2 server (what stickyd runs), h2floor/ MODE=hyper
#   h2       the h2 crate driven directly, h2floor/ MODE=h2
# One thread each on PROXY_CPU, h2load on LOAD_CPU, -c$CLIENTS -m$STREAMS:
# CPU per request (perf stat task-clock over the run) at a fixed rate
# (RATE requests/s in all) and at saturation. Medians of ROUNDS rounds, the
# order rotating. Writes h2floor.csv.
#
#   tests/load/bench/h2floor.sh
#
# Environment (all optional): CLIENTS=200 STREAMS=10 DURATION=5 ROUNDS=3
#   RATE=10000 PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18950 OUT=benchmarks/results
# Not part of CI. Needs haproxy, h2load, perf and cargo. Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BENCH="$ROOT/tests/load/bench"
CLIENTS=${CLIENTS:-200}
STREAMS=${STREAMS:-10}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18950}
OUT=${OUT:-$ROOT/benchmarks/results}

log() { printf '[h2floor %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
for t in haproxy h2load perf cargo taskset; do command -v "$t" >/dev/null || die "$t is missing"; done

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-h2floor

log "building h2floor"
CARGO_TARGET_DIR="$ROOT/target/h2floor" cargo build --release --locked -q \
    --manifest-path "$BENCH/h2floor/Cargo.toml" || die "cargo build of h2floor failed"
FLOOR="$ROOT/target/h2floor/release/h2floor"

cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 1s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:$BASE_PORT proto h2
    http-request return status 200 content-type text/plain string "ok"
CFG

start() {
    case $1 in
        haproxy) start_on "$BASE_PORT" "$WORK/haproxy.log" taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db ;;
        *) start_on "$BASE_PORT" "$WORK/$1.log" taskset -c "$PROXY_CPU" env MODE="$1" ADDR="127.0.0.1:$BASE_PORT" "$FLOOR" ;;
    esac
}

CSV="$OUT/h2floor.csv"
echo "round,server,kind,req_per_s,requests,us_per_req" >"$CSV"
servers=(haproxy hyper h2)
per_client=$(( (RATE + CLIENTS - 1) / CLIENTS ))
for r in $(seq 1 "$ROUNDS"); do
    order=("${servers[@]:$(( (r - 1) % 3 ))}" "${servers[@]:0:$(( (r - 1) % 3 ))}")
    for s in "${order[@]}"; do
        for kind in rate saturate; do
            start "$s"
            pid=$PID
            extra=()
            [[ $kind == rate ]] && extra=(--rps "$per_client")
            perf stat -e task-clock -p "$pid" -o "$WORK/stat" -- sleep $((DURATION + 2)) &
            statpid=$!
            sleep 0.3
            taskset -c "$LOAD_CPU" h2load -c"$CLIENTS" -m"$STREAMS" -D "$DURATION" "${extra[@]}" \
                "http://127.0.0.1:$BASE_PORT/" >"$WORK/run.out" 2>&1 || true
            wait "$statpid"
            read -r rps _ n _ _ < <(h2load_figures "$WORK/run.out")
            ms=$(awk '/task-clock/ {gsub(",", "", $1); print $1}' "$WORK/stat")
            us=$(awk -v ms="$ms" -v n="$n" 'BEGIN { printf "%.2f", n ? ms * 1000 / n : 0 }')
            echo "$r,$s,$kind,$rps,$n,$us" >>"$CSV"
            log "round $r $s $kind: $rps req/s, $n 2xx, $us µs of CPU per request"
            stop "$pid"
        done
    done
done
log "wrote $CSV"
python3 "$BENCH/medians.py" "$CSV" --by kind,server --median req_per_s,us_per_req --rounds us_per_req
