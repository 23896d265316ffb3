#!/usr/bin/env bash
# gRPC as users run it: a Go gRPC app (grpcapp/, grpc-go, h2c) behind two
# stickyd sidecars, local and forwarded, and behind HAProxy, in one run.
#
#   tests/load/bench/grpc.sh
#
# Two pods: pod-a (stickyd on 127.0.0.1, its app on 127.0.0.1:APP) and pod-b
# (127.0.0.2), each sidecar with STICKYD_UPSTREAM_PROTOCOL=h2c. Paths:
#   stickyd-local      client -> pod-a's sidecar -> pod-a's app (cookie names pod-a)
#   stickyd-forwarded  client -> pod-a's sidecar -> pod-b's sidecar -> pod-b's app
#   haproxy            `bind … proto h2`, servers `proto h2`, cookie insert (SRV=s1)
# Both sidecars and HAProxy run on PROXY_CPU, one worker each; the app and
# the load on LOAD_CPU. Every run starts fresh proxy processes. Per round and
# path (the order rotating):
#   - unary saturation: h2load -c$CLIENTS -m$STREAMS, POST /bench.Echo/Unary
#     with a gRPC-framed message: calls/s, peak RSS (VmHWM) of the path's
#     proxies, their CPU seconds per 1,000 calls;
#   - stream saturation: the same on /bench.Echo/Stream, each call answered
#     with STREAM_COUNT messages: calls/s (messages/s = × STREAM_COUNT);
#   - unary at a fixed rate: k6's gRPC client (grpc.js), RATE calls/s for
#     DURATION: p50/p99, calls whose status was not OK, CPU per call;
#   - server streams at a fixed rate: k6, STREAM_RATE calls/s of
#     STREAM_COUNT messages each: p99 of a whole stream, failures;
#   - one long server stream (grpcio, grpc_stream_timing.py): LONG_COUNT
#     messages LONG_INTERVAL_MS apart; the largest lag of a message behind
#     the app's schedule shows whether the proxy buffers it (direct to the app
#     as the baseline).
# Writes grpc.csv and grpc-stream-timing.csv, and prints the medians.
#
# Environment (all optional): CLIENTS=100 STREAMS=10 DURATION=8 ROUNDS=3
#   RATE=2000 STREAM_RATE=500 STREAM_COUNT=10 LONG_COUNT=20
#   LONG_INTERVAL_MS=100 PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18900
#   OUT=benchmarks/results STICKYDTEST_BIN=path (default target/release/stickyd)
#
# Not part of CI. Needs go (builds grpcapp; the Go module proxy the first
# time), haproxy, h2load (nghttp2-client), k6, python3 with grpcio, curl.
# Loopback only; stops everything it started on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BENCH="$ROOT/tests/load/bench"
CLIENTS=${CLIENTS:-100}
STREAMS=${STREAMS:-10}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-2000}
STREAM_RATE=${STREAM_RATE:-500}
STREAM_COUNT=${STREAM_COUNT:-10}
LONG_COUNT=${LONG_COUNT:-20}
LONG_INTERVAL_MS=${LONG_INTERVAL_MS:-100}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18900}
OUT=${OUT:-$ROOT/benchmarks/results}
STICKYDTEST_BIN=${STICKYDTEST_BIN:-$ROOT/target/release/stickyd}

APP_PORT=$((BASE_PORT + 1))
SD_PORT=$((BASE_PORT + 10))   # pod-a on 127.0.0.1, pod-b on 127.0.0.2
ADMIN_A=$((BASE_PORT + 11))
ADMIN_B=$((BASE_PORT + 12))
HAPROXY_PORT=$((BASE_PORT + 20))

log() { printf '[grpc %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
for t in go haproxy h2load k6 python3 curl taskset; do command -v "$t" >/dev/null || die "$t is missing"; done
python3 -c 'import grpc' 2>/dev/null || die "python3 lacks grpcio (pip install grpcio)"
[[ -x "$STICKYDTEST_BIN" ]] || die "no stickyd at $STICKYDTEST_BIN (cargo build --release)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-grpc

log "building grpcapp"
(cd "$BENCH/grpcapp" && go build -o "$WORK/grpcapp" .) || die "go build of grpcapp failed"

# The app: one grpc-go server listening for both pods.
taskset -c "$LOAD_CPU" "$WORK/grpcapp" "127.0.0.1:$APP_PORT" "127.0.0.2:$APP_PORT" >"$WORK/app.log" 2>&1 &
STARTED+=($!)
wait_port 127.0.0.1 "$APP_PORT"
wait_port 127.0.0.2 "$APP_PORT"

sed -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" -e "s|@BACKEND_PORT@|$APP_PORT|g" \
    -e "s|^\(    bind .*\)|\1 proto h2|" -e "s|^\(    server .*\)|\1 proto h2|" "$BENCH/haproxy.cfg" >"$WORK/haproxy.cfg"

ENDPOINTS="static:pod-a=127.0.0.1:$SD_PORT,pod-b=127.0.0.2:$SD_PORT"
start_sidecar() { # pod ip admin-port
    start_on_addr "$2" "$SD_PORT" "$WORK/$1.err" taskset -c "$PROXY_CPU" env STICKYD_LISTEN="$2:$SD_PORT" \
        STICKYD_ADMIN_LISTEN="127.0.0.1:$3" STICKYD_UPSTREAM="http://$2:$APP_PORT" \
        STICKYD_UPSTREAM_PROTOCOL=h2c STICKYD_POD_NAME="$1" STICKYD_ENDPOINTS="$ENDPOINTS" \
        STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn STICKYD_DRAIN_SECONDS=0 "$STICKYDTEST_BIN" run
}
start_on_addr() { # ip port log cmd...
    local ip=$1 port=$2 log=$3
    shift 3
    "$@" >>"$log" 2>&1 &
    PID=$!
    STARTED+=("$PID")
    wait_port "$ip" "$port"
}
# Starts the path's proxies: PIDS (all of them, for RSS and CPU), TARGET, COOKIE.
start_path() {
    case $1 in
        haproxy)
            start_on "$HAPROXY_PORT" "$WORK/haproxy.log" taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db
            PIDS=("$PID") TARGET="127.0.0.1:$HAPROXY_PORT" COOKIE="SRV=s1" ;;
        stickyd-local)
            start_sidecar pod-a 127.0.0.1 "$ADMIN_A"
            PIDS=("$PID") TARGET="127.0.0.1:$SD_PORT" COOKIE="stickyd=$(cookie_for pod-a)" ;;
        stickyd-forwarded)
            start_sidecar pod-a 127.0.0.1 "$ADMIN_A"
            local a=$PID
            start_sidecar pod-b 127.0.0.2 "$ADMIN_B"
            PIDS=("$a" "$PID") TARGET="127.0.0.1:$SD_PORT" COOKIE="stickyd=$(cookie_for pod-b)" ;;
    esac
}
stop_path() { local p; for p in "${PIDS[@]}"; do stop "$p"; done; }

field_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
cpu_ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$s"; }
peak_kib() { local s=0 p; for p in "$@"; do s=$((s + $(field_kib "$p" VmHWM))); done; echo "$s"; }
HZ=$(getconf CLK_TCK)

# gRPC-framed bench.Msg bodies: payload "hello"; the stream's with count.
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/unary.bin"
printf '%b' "\\x00\\x00\\x00\\x00\\x09\\x0a\\x05hello\\x10\\x$(printf %02x "$STREAM_COUNT")" >"$WORK/stream.bin"
((STREAM_COUNT < 128)) || die "STREAM_COUNT is below 128 (one varint byte)"
cp "$BENCH/grpcapp/echo.proto" "$WORK/"

# Every path answers a real gRPC call with OK, and the forwarded one is
# served by pod-b.
for p in stickyd-local stickyd-forwarded haproxy; do
    start_path "$p"
    r=$(python3 "$BENCH/grpc_stream_timing.py" "$TARGET" "$COOKIE" 2 10)
    [[ "$r" == *'"status": "OK", "messages": 2'* ]] || die "$p: $r"
    if [[ "$p" == stickyd-forwarded ]]; then
        curl -s "http://127.0.0.1:$ADMIN_A/metrics" | grep -q 'decision="forwarded".*target_pod="pod-b"' \
            || die "pod-a did not forward the call to pod-b"
    fi
    stop_path
done
log "every path answers gRPC calls with OK"


CSV="$OUT/grpc.csv"
TCSV="$OUT/grpc-stream-timing.csv"
echo "round,path,kind,calls_per_s,calls,failed,p50_ms,p99_ms,peak_rss_kib,cpu_s_per_1k" >"$CSV"
echo "round,path,status,messages,first_ms,max_lag_ms" >"$TCSV"
paths=(stickyd-local stickyd-forwarded haproxy)
for r in $(seq 1 "$ROUNDS"); do
    order=("${paths[@]:$(( (r - 1) % 3 ))}" "${paths[@]:0:$(( (r - 1) % 3 ))}")
    d=$(python3 "$BENCH/grpc_stream_timing.py" "127.0.0.1:$APP_PORT" "" "$LONG_COUNT" "$LONG_INTERVAL_MS")
    echo "$r,direct,$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(",".join(str(d[k]) for k in ("status","messages","first_ms","max_lag_ms")))' "$d")" >>"$TCSV"
    for p in "${order[@]}"; do
        for kind in unary-saturate stream-saturate unary-rate stream-rate long-stream; do
            start_path "$p"
            t0=$(cpu_ticks "${PIDS[@]}")
            p50="" p99=""
            case $kind in
                unary-saturate | stream-saturate)
                    body=$WORK/unary.bin method=Unary
                    [[ $kind == stream-saturate ]] && body=$WORK/stream.bin method=Stream
                    taskset -c "$LOAD_CPU" h2load -c"$CLIENTS" -m"$STREAMS" -D "$DURATION" -d "$body" \
                        -H "content-type: application/grpc" -H "te: trailers" -H "cookie: $COOKIE" \
                        "http://$TARGET/bench.Echo/$method" >"$WORK/run.out" 2>&1 || true
                    read -r rate calls _ bad unanswered < <(h2load_figures "$WORK/run.out")
                    failed=$((bad + unanswered)) ;;
                unary-rate | stream-rate)
                    k=unary rt=$RATE
                    [[ $kind == stream-rate ]] && k=stream rt=$STREAM_RATE
                    (cd "$WORK" && taskset -c "$LOAD_CPU" env KIND="$k" RATE="$rt" COUNT="$STREAM_COUNT" DURATION="${DURATION}s" \
                        TARGET="$TARGET" COOKIE="$COOKIE" PROTO_DIR="$WORK" OUT="$WORK/k6.json" \
                        k6 run -q "$BENCH/grpc.js" >"$WORK/k6.out" 2>&1) || true
                    read -r rate calls failed p50 p99 < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["per_s"], d["calls"], d["failed"], d["p50_ms"], d["p99_ms"])' "$WORK/k6.json") ;;
                long-stream)
                    t=$(python3 "$BENCH/grpc_stream_timing.py" "$TARGET" "$COOKIE" "$LONG_COUNT" "$LONG_INTERVAL_MS")
                    echo "$r,$p,$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(",".join(str(d[k]) for k in ("status","messages","first_ms","max_lag_ms")))' "$t")" >>"$TCSV"
                    log "round $r $p long stream: $t"
                    stop_path
                    continue ;;
            esac
            t1=$(cpu_ticks "${PIDS[@]}")
            hwm=$(peak_kib "${PIDS[@]}")
            cpu=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v n="$calls" 'BEGIN { printf "%.4f", n ? t / hz / n * 1000 : 0 }')
            echo "$r,$p,$kind,$rate,$calls,$failed,$p50,$p99,$hwm,$cpu" >>"$CSV"
            log "round $r $p $kind: $rate calls/s, $calls calls, $failed failed, p50 ${p50:--} p99 ${p99:--} ms, peak RSS $((hwm / 1024)) MiB, $cpu CPU s per 1k"
            stop_path
        done
    done
done
log "wrote $CSV and $TCSV"
python3 "$BENCH/medians.py" "$CSV" --by kind,path --median calls_per_s,p50_ms,p99_ms,peak_rss_kib,cpu_s_per_1k --sum failed
python3 "$BENCH/medians.py" "$TCSV" --by path,status,messages --median first_ms,max_lag_ms --rounds max_lag_ms
