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
# WS=1: WebSockets instead of requests. The backend is an echo server
# (ws.py), and each spike opens that many WebSockets through the proxy, each
# with a real handshake (Sec-WebSocket-Accept) and one echo, holds them all
# open HOLD seconds while VmRSS is sampled, then closes them. Writes
# memory-ws.csv.
#
# STICKYDTEST_BINS="name=path name=path ..." compares several stickyd binaries
# (allocators, targets) in the same run; each name's STICKYDTEST_ENV_<name> is
# added to its environment (e.g. STICKYDTEST_ENV_glibc_trim="GLIBC_TUNABLES=...").
#
# HEAPTRACK=N: instead, run stickyd under heaptrack for one spike of N
# connections and print heaptrack_print's peak-memory report (apt-get install
# heaptrack).
#
# LIMIT=128Mi: instead, the behaviour at the memory limit: stickyd alone with
# STICKYD_MEMORY_LIMIT=$LIMIT and the connection limit it derives from it, a
# spike of each count in CONNS (more than that limit), VmRSS sampled every
# 0.2 s and its maximum kept, a fresh connection probed every second during
# the spike and once after it, and the sheds read from /metrics. Writes
# memory-limit.csv. With CGROUP=1 (root, a cgroup v1 memory controller at
# /sys/fs/cgroup/memory), stickyd runs in a memory cgroup of its own whose
# memory.limit_in_bytes is LIMIT, is not told STICKYD_MEMORY_LIMIT (it reads
# the limit from the cgroup, as in a pod), and the cgroup's peak charge
# (memory.max_usage_in_bytes: anonymous memory, page cache and kernel
# memory), its peak TCP buffer charge and its OOM kills are recorded too.
#
# Environment (all optional): CONNS="1000 2000 4000" HOLD=8 ROUNDS=3 AFTER=20
#   PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18600 OUT=benchmarks/results RSS_FIELD=VmRSS
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
LIMIT=${LIMIT:-}
CGROUP=${CGROUP:-}

BACKEND_PORT=$((BASE_PORT + 1))
HAPROXY_PORT=$((BASE_PORT + 20))
SD_PORT=$((BASE_PORT + 10))
SD_ADMIN=$((BASE_PORT + 11))

log() { printf '[memory %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
[[ -n "${STICKYDTEST_BINS:-}" || -x "$STICKYDTEST_BIN" ]] || die "no stickyd at $STICKYDTEST_BIN (cargo build --release)"
for t in nginx haproxy wrk taskset; do command -v "$t" >/dev/null || die "$t is missing"; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-memory

render() { # template -> file in $WORK
    sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        "$BENCH/$1" >"$WORK/$1"
}
# RSS_FIELD=RssAnon counts anonymous memory only (heap, stacks), leaving out
# the binary's own pages, which a process touches as it first runs each path.
rss_kib() { awk -v f="${RSS_FIELD:-VmRSS}:" '$1 == f {print $2}' "/proc/$1/status"; }

render backend.nginx.conf; render haproxy.cfg
if [[ "${WS:-}" == 1 ]]; then
    taskset -c "$LOAD_CPU" python3 "$BENCH/ws.py" serve "$BACKEND_PORT" >"$WORK/ws-backend.log" 2>&1 &
else
    taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
fi
STARTED+=($!)
wait_port 127.0.0.1 "$BACKEND_PORT"

start_stickyd() { # bin extra-env [wrapper...]
    local bin=$1 extra=$2; shift 2
    # shellcheck disable=SC2086
    taskset -c "$PROXY_CPU" env STICKYD_LISTEN="127.0.0.1:$SD_PORT" STICKYD_ADMIN_LISTEN="127.0.0.1:$SD_ADMIN" \
        STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" STICKYD_POD_NAME=pod-a \
        STICKYD_ENDPOINTS="static:pod-a=127.0.0.1:$SD_PORT" STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn \
        STICKYD_DRAIN_SECONDS=0 $STICKYDTEST_ENV $extra "$@" "$bin" run \
        2>>"$WORK/stickyd.err" &
    PID=$!
    STARTED+=("$PID")
    wait_port 127.0.0.1 "$SD_PORT"
}
start_haproxy() { start_on "$HAPROXY_PORT" "$WORK/haproxy.log" taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db; }

COOKIE="stickyd=$(cookie_for pod-a)"
spike() { # port connections pid cookie -> median RSS KiB under load
    [[ "${WS:-}" == 1 ]] && { ws_spike "$@"; return; }
    local samples=()
    taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"${HOLD}s" -H "Cookie: $4" "http://127.0.0.1:$1/" >"$WORK/wrk.out" 2>&1 &
    local w=$!
    sleep 2
    for _ in $(seq 1 $(((HOLD - 3) * 2))); do samples+=("$(rss_kib "$3")"); sleep 0.5; done
    wait "$w"
    if grep -q "Socket errors" "$WORK/wrk.out"; then log "  $(grep 'Socket errors' "$WORK/wrk.out")"; fi
    printf '%s\n' "${samples[@]}" | median
}

ws_spike() { # port websockets pid cookie -> median RSS KiB with them all open
    local samples=() out="$WORK/ws.out"
    taskset -c "$LOAD_CPU" python3 "$BENCH/ws.py" hold "$1" "$2" "$4" "$HOLD" >"$out" 2>&1 &
    local w=$!
    for _ in $(seq 1 1200); do grep -q '^open' "$out" && break; kill -0 "$w" 2>/dev/null || break; sleep 0.05; done
    grep -q "^open $2\$" "$out" || die "not every WebSocket opened: $(cat "$out")"
    for _ in $(seq 1 $((HOLD * 2 - 2))); do samples+=("$(rss_kib "$3")"); sleep 0.5; done
    wait "$w" || die "WebSockets failed: $(cat "$out")"
    printf '%s\n' "${samples[@]}" | median
}

if [[ -n "$HEAPTRACK" ]]; then
    command -v heaptrack >/dev/null || die "heaptrack is missing (apt-get install heaptrack)"
    start_stickyd "$STICKYDTEST_BIN" "STICKYD_MAX_CONNECTIONS=20000" heaptrack -o "$OUT/heap-stickyd"
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

metric() { # name -> value summed over its series
    curl -s "http://127.0.0.1:$SD_ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'
}
probe() { # -> HTTP status of one request on a fresh connection (000: none)
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Cookie: $COOKIE" "http://127.0.0.1:$SD_PORT/" || true
}
bytes_of() { # 128Mi, 1Gi, 512Ki or bytes -> bytes
    awk -v v="$1" 'BEGIN {m = 1; if (v ~ /Ki$/) m = 1024; if (v ~ /Mi$/) m = 1048576; if (v ~ /Gi$/) m = 1073741824;
        sub(/[KMG]i$/, "", v); printf "%d", v * m}'
}
if [[ -n "$LIMIT" ]]; then
    command -v curl >/dev/null || die "curl is missing"
    CSV="$OUT/memory-limit.csv"
    echo "round,connections,limit,max_connections,idle_kib,max_kib,after_kib,probes_ok,probes,after_probe,shed_connections,refused,shed_requests,req_per_s,cgroup_peak_kib,cgroup_tcp_peak_kib,oom_kills" >"$CSV"
    CG=""
    if [[ -n "$CGROUP" ]]; then
        CG=/sys/fs/cgroup/memory/stickyd-bench-$$
        mkdir "$CG" || die "cannot create a memory cgroup at $CG (root and cgroup v1 needed)"
        # Removed on exit once its processes are gone (the trap stops them first).
        trap 'bench_cleanup; sleep 0.5; rmdir "$CG" 2>/dev/null || true' EXIT
        bytes_of "$LIMIT" >"$CG/memory.limit_in_bytes"
        # Turns on TCP buffer accounting for the cgroup (v1 counts it apart).
        echo 1099511627776 >"$CG/memory.kmem.tcp.limit_in_bytes" 2>/dev/null || true
    fi
    for r in $(seq 1 "$ROUNDS"); do
        for n in $CONNS; do
            if [[ -n "$CG" ]]; then
                echo 0 >"$CG/memory.max_usage_in_bytes"
                echo 0 >"$CG/memory.kmem.tcp.max_usage_in_bytes" 2>/dev/null || true
                # shellcheck disable=SC2016 # $$ and $@ are the inner shell's
                start_stickyd "$STICKYDTEST_BIN" "STICKYD_LOG=info" sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG"
            else
                start_stickyd "$STICKYDTEST_BIN" "STICKYD_MEMORY_LIMIT=$LIMIT STICKYD_LOG=info"
            fi
            sleep 1
            idle=$(rss_kib "$PID")
            maxc=$(grep -oE 'max_connections"?[=:][0-9]+' "$WORK/stickyd.err" | tail -1 | grep -oE '[0-9]+$')
            taskset -c "$LOAD_CPU" wrk -t1 -c"$n" -d"${HOLD}s" -H "Cookie: $COOKIE" "http://127.0.0.1:$SD_PORT/" >"$WORK/wrk.out" 2>&1 &
            w=$!
            peak=0 ok=0 probes=0 last=$SECONDS
            while kill -0 "$w" 2>/dev/null; do
                k=$(rss_kib "$PID"); ((k > peak)) && peak=$k
                if ((SECONDS > last)); then
                    last=$SECONDS; probes=$((probes + 1))
                    [[ $(probe) == 200 ]] && ok=$((ok + 1))
                fi
                sleep 0.2
            done
            wait "$w" || true
            rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$WORK/wrk.out" 2>/dev/null || echo -)
            sleep "$AFTER"
            after=$(rss_kib "$PID")
            after_probe=$(probe)
            kill -0 "$PID" 2>/dev/null || die "stickyd died during the spike (see $WORK/stickyd.err)"
            shed_c=$(metric stickyd_shed_total) refused=$(metric stickyd_connections_refused_total)
            shed_r=$(curl -s "http://127.0.0.1:$SD_ADMIN/metrics" | awk '/^stickyd_shed_total\{kind="request"\}/ {print $2}')
            stop "$PID"
            cg_peak="" cg_tcp="" ooms=""
            if [[ -n "$CG" ]]; then
                cg_peak=$(($(cat "$CG/memory.max_usage_in_bytes") / 1024))
                cg_tcp=$(($(cat "$CG/memory.kmem.tcp.max_usage_in_bytes" 2>/dev/null || echo 0) / 1024))
                ooms=$(awk '/^oom_kill / {print $2}' "$CG/memory.oom_control")
            fi
            echo "$r,$n,$LIMIT,${maxc:-?},$idle,$peak,$after,$ok,$probes,$after_probe,$shed_c,$refused,${shed_r:-0},$rps,$cg_peak,$cg_tcp,$ooms" | tee -a "$CSV" >&2
        done
    done
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
[[ "${WS:-}" == 1 ]] && CSV="$OUT/memory-ws.csv"
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
                start_stickyd "${BIN[$p]}" "STICKYD_MAX_CONNECTIONS=20000 ${!env_var:-}"; port=$SD_PORT cookie=$COOKIE
            fi
            sleep 1
            idle=$(rss_kib "$PID")
            kib=$(spike "$port" "$n" "$PID" "$cookie")
            rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$WORK/wrk.out" 2>/dev/null || echo -)
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
