#!/usr/bin/env bash
# HTTP/2 clients (h2c with prior knowledge, as gRPC and HTTP/2 ingresses
# arrive), stickyd beside HAProxy in one run.
#
#   tests/load/bench/h2.sh
#
# The backend (nginx, "ok\n") and h2load run on LOAD_CPU; stickyd (one
# worker, every request carrying a cookie that names the local pod) and
# HAProxy (`bind … proto h2`, cookie insert, one thread) on PROXY_CPU. For
# each round and each proxy (the order rotates per round), a fresh proxy
# process serves:
#   - saturation: h2load -c$CLIENTS -m$STREAMS for DURATION seconds: req/s,
#     answers other than 2xx, peak RSS (VmHWM) and CPU seconds per 1,000
#     requests;
#   - a fixed rate (RATE requests/s over all clients, h2load --rps): CPU
#     seconds per 1,000 requests and peak RSS.
# UPSTREAM=h1 (default): the app speaks HTTP/1.1. UPSTREAM=h2c: the app is an
# h2c server (nginx `listen … http2`, a gRPC app's protocol); stickyd gets
# STICKYD_UPSTREAM_PROTOCOL=h2c and HAProxy `proto h2` on its servers.
# Writes h2-$UPSTREAM.csv and prints the medians.
#
# LIMIT=128Mi: instead, the behaviour at the memory limit: stickyd alone with
# STICKYD_MEMORY_LIMIT=$LIMIT under h2load -c$CLIENTS -m$STREAMS (set
# CLIENTS=1000), VmRSS sampled every 0.25 s and its maximum kept, the answers
# by status class, the sheds from /metrics, whether the process is still up,
# and a fresh request afterwards. HAPROXY_TOO=1 runs HAProxy the same way
# beside it. Writes h2-limit.csv.
#
# Environment (all optional): CLIENTS=200 STREAMS=10 DURATION=8 ROUNDS=3
#   RATE=10000 UPSTREAM=h1 PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18700
#   OUT=benchmarks/results STICKYDTEST_BIN=path (default target/release/stickyd)
#   STICKYDTEST_ENV="VAR=value ..." STICKYDTEST_BINS="name=path ..." (several
#   stickyd builds in the same run, as memory.sh)
#
# Not part of CI. Needs nginx, haproxy, h2load (apt-get install
# nghttp2-client) and curl. Loopback only; stops everything it started on
# exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BENCH="$ROOT/tests/load/bench"
CLIENTS=${CLIENTS:-200}
STREAMS=${STREAMS:-10}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
UPSTREAM=${UPSTREAM:-h1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18700}
OUT=${OUT:-$ROOT/benchmarks/results}
STICKYDTEST_BIN=${STICKYDTEST_BIN:-$ROOT/target/release/stickyd}
STICKYDTEST_ENV=${STICKYDTEST_ENV:-}
LIMIT=${LIMIT:-}

BACKEND_PORT=$((BASE_PORT + 1))
SD_PORT=$((BASE_PORT + 10))
SD_ADMIN=$((BASE_PORT + 11))
HAPROXY_PORT=$((BASE_PORT + 20))

log() { printf '[h2 %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
for t in nginx haproxy h2load curl taskset; do command -v "$t" >/dev/null || die "$t is missing"; done
[[ "$UPSTREAM" == h1 || "$UPSTREAM" == h2c ]] || die "UPSTREAM is h1 or h2c, not $UPSTREAM"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-h2

# The backend and HAProxy of memory.sh, with HTTP/2 where this run needs it.
sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" "$BENCH/backend.nginx.conf" >"$WORK/backend.conf"
sed -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
    -e "s|^\(    bind .*\)|\1 proto h2|" "$BENCH/haproxy.cfg" >"$WORK/haproxy.cfg"
if [[ "$UPSTREAM" == h2c ]]; then
    sed -i -e "s|^\(        listen .*\) backlog=4096;|\1 backlog=4096 http2;|" "$WORK/backend.conf"
    sed -i -e "s|^\(    server .*\)|\1 proto h2|" "$WORK/haproxy.cfg"
fi

field_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
STARTED+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"
# The backend speaks what it should.
if [[ "$UPSTREAM" == h2c ]]; then
    curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$BACKEND_PORT/" || die "the backend does not speak h2c"
fi

start_stickyd() { # bin extra-env
    local bin=$1 extra=$2 proto=""
    [[ "$UPSTREAM" == h2c ]] && proto="STICKYD_UPSTREAM_PROTOCOL=h2c"
    # shellcheck disable=SC2086
    start_on "$SD_PORT" "$WORK/stickyd.err" taskset -c "$PROXY_CPU" env STICKYD_LISTEN="127.0.0.1:$SD_PORT" \
        STICKYD_ADMIN_LISTEN="127.0.0.1:$SD_ADMIN" STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" \
        STICKYD_POD_NAME=pod-a $proto STICKYD_ENDPOINTS="static:pod-a=127.0.0.1:$SD_PORT" \
        STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn STICKYD_DRAIN_SECONDS=0 $STICKYDTEST_ENV $extra "$bin" run
}
start_haproxy() { start_on "$HAPROXY_PORT" "$WORK/haproxy.log" taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db; }

SD_COOKIE="stickyd=$(cookie_for pod-a)"
HA_COOKIE="SRV=s1"
h2load_run() { # port cookie out extra-args... (h2load's output in $out)
    local port=$1 cookie=$2 out=$3; shift 3
    taskset -c "$LOAD_CPU" h2load -c"$CLIENTS" -m"$STREAMS" -H "cookie: $cookie" "$@" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || true
}
# h2load's figures: req/s, requests answered, 2xx, 3xx+4xx+5xx, and
# requests that got no answer (refused streams, connections sent away)

if [[ -n "$LIMIT" ]]; then
    CSV="$OUT/h2-limit.csv"
    echo "round,proxy,clients,streams,limit,max_rss_kib,requests,ok,not_ok,unanswered,shed_streams,shed_connections,shed_requests,alive,after_status" >"$CSV"
    sample_max() { # pid -> writes the max VmRSS (KiB) seen into $WORK/max until the pid's h2load ends
        local m=0 v
        while [[ -e "$WORK/running" ]]; do
            v=$(field_kib "$1" VmRSS 2>/dev/null || echo 0)
            ((v > m)) && m=$v
            sleep 0.25
        done
        echo "$m" >"$WORK/max"
    }
    metric() {
        curl -s "http://127.0.0.1:$SD_ADMIN/metrics" | awk -v m="$1" -v l="$2" '
            ($1 == m || index($1, m "{") == 1) && index($1, l) { s += $2 } END { printf "%d", s }'
    }
    proxies=(stickyd)
    [[ "${HAPROXY_TOO:-}" == 1 ]] && proxies+=(haproxy)
    for r in $(seq 1 "$ROUNDS"); do
        for p in "${proxies[@]}"; do
            if [[ "$p" == stickyd ]]; then
                start_stickyd "$STICKYDTEST_BIN" "STICKYD_MEMORY_LIMIT=$LIMIT STICKYD_LOG=info"
                port=$SD_PORT cookie=$SD_COOKIE
            else
                start_haproxy
                port=$HAPROXY_PORT cookie=$HA_COOKIE
            fi
            pid=$PID
            touch "$WORK/running"
            sample_max "$pid" &
            sampler=$!
            h2load_run "$port" "$cookie" "$WORK/limit.out" -D "$DURATION"
            rm -f "$WORK/running"
            wait "$sampler"
            read -r _ answered ok bad unanswered < <(h2load_figures "$WORK/limit.out")
            alive=0
            kill -0 "$pid" 2>/dev/null && alive=1
            after=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --http2-prior-knowledge \
                -H "cookie: $cookie" "http://127.0.0.1:$port/" || true)
            streams=0 conns=0 reqs=0
            if [[ "$p" == stickyd ]]; then
                streams=$(metric stickyd_shed_total stream)
                conns=$(metric stickyd_shed_total connection)
                reqs=$(metric stickyd_shed_total request)
            fi
            echo "$r,$p,$CLIENTS,$STREAMS,$LIMIT,$(cat "$WORK/max"),$answered,$ok,$bad,$unanswered,$streams,$conns,$reqs,$alive,$after" >>"$CSV"
            log "round $r $p: max RSS $(($(cat "$WORK/max") / 1024)) MiB; $answered answered, $ok 2xx, $bad not 2xx, $unanswered unanswered (refused, sent away); shed streams $streams, connections $conns, requests $reqs; alive $alive; after: $after"
            stop "$pid"
        done
    done
    log "wrote $CSV"
    exit 0
fi

CSV="$OUT/h2-$UPSTREAM.csv"
echo "round,proxy,kind,clients,streams,req_per_s,requests,ok,not_ok,unanswered,peak_rss_kib,cpu_s_per_1k" >"$CSV"
HZ=$(getconf CLK_TCK)
declare -A BINS=()
if [[ -n "${STICKYDTEST_BINS:-}" ]]; then
    for nb in $STICKYDTEST_BINS; do BINS[${nb%%=*}]=${nb#*=}; done
else
    BINS[stickyd]=$STICKYDTEST_BIN
fi
proxies=("${!BINS[@]}" haproxy)
per_client=$(( (RATE + CLIENTS - 1) / CLIENTS ))
for r in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round.
    order=("${proxies[@]:$(( (r - 1) % ${#proxies[@]} ))}" "${proxies[@]:0:$(( (r - 1) % ${#proxies[@]} ))}")
    for p in "${order[@]}"; do
        for kind in saturate rate; do
            if [[ "$p" == haproxy ]]; then
                start_haproxy
                port=$HAPROXY_PORT cookie=$HA_COOKIE
            else
                env_name="STICKYDTEST_ENV_$p"
                start_stickyd "${BINS[$p]}" "${!env_name:-}"
                port=$SD_PORT cookie=$SD_COOKIE
            fi
            pid=$PID
            t0=$(cpu_ticks "$pid")
            if [[ "$kind" == saturate ]]; then
                h2load_run "$port" "$cookie" "$WORK/run.out" -D "$DURATION"
            else
                h2load_run "$port" "$cookie" "$WORK/run.out" -D "$DURATION" --rps "$per_client"
            fi
            t1=$(cpu_ticks "$pid")
            hwm=$(field_kib "$pid" VmHWM)
            read -r rps answered ok bad unanswered < <(h2load_figures "$WORK/run.out")
            cpu=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v n="$answered" 'BEGIN { printf "%.4f", n ? t / hz / n * 1000 : 0 }')
            echo "$r,$p,$kind,$CLIENTS,$STREAMS,$rps,$answered,$ok,$bad,$unanswered,$hwm,$cpu" >>"$CSV"
            log "round $r $p $kind: $rps req/s, $ok 2xx, $bad not 2xx, peak RSS $((hwm / 1024)) MiB, $cpu CPU s per 1k"
            [[ "$bad" == 0 && "$unanswered" == 0 ]] || log "  $p: $bad answers other than 2xx, $unanswered requests unanswered"
            stop "$pid"
        done
    done
done
log "wrote $CSV"
python3 "$BENCH/medians.py" "$CSV" --by proxy,kind --median req_per_s,peak_rss_kib,cpu_s_per_1k --sum not_ok,unanswered
