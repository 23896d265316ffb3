#!/usr/bin/env bash
# Endpoint churn at scale: one stickyd sidecar (STICKYD_WORKER_THREADS=1)
# watching the apiserver double (examples/churn_apiserver.rs) through a
# kubeconfig: a Service of $PODS pods in EndpointSlices of $PER_SLICE, one
# slice flipping readiness $HZ times a second, and k6 at $RATE req/s
# (constant-arrival-rate, tests/load/bench/rate.js) through the sidecar,
# every request pinned to it (the local path).
#
#   tests/load/bench/churn.sh
#   BINS="main=/path/to/old/stickyd this=target/release/stickyd" tests/load/bench/churn.sh
#
# For every round and binary, on a fresh sidecar that has listed every pod,
# three phases of $DURATION seconds each:
#   steady      k6, no churn
#   churn+load  k6 and the churn
#   churn       the churn alone: what the updates cost
# recording k6's p50/p90/p99, the sidecar's CPU (utime+stime deltas from
# /proc/PID/stat, all threads, and of its endpoint thread "stickyd-watch"
# alone where it has one), the views it swapped in
# (stickyd_endpoints_updates_total) and the flips the double made, over
# how long it flipped. Rounds
# interleave the binaries, the order rotating each round.
#
# The sidecar is pinned to PROXY_CPU; k6, the backend (nginx) and the double
# to LOAD_CPU. Loopback only; every wait is bounded; everything started is
# stopped on exit. Results: $OUT/runs.csv, machine.txt and summary.md
# (tests/load/bench/churn_report.py).
#
# Environment (all optional):
#   BINS="name=path ..."  (default: "this=" this tree's release build, built first)
#   ROUNDS=3 DURATION=20 RATE=1000 HZ=18 PODS=5000 PER_SLICE=100
#   PROXY_CPU=1 LOAD_CPU=0 BASE_PORT=18700 OUT=benchmarks/results/churn
#
# Needs nginx, k6, curl and taskset (tests/load/bench.sh installs them).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/../../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
RATE=${RATE:-1000}
HZ=${HZ:-18}
PODS=${PODS:-5000}
PER_SLICE=${PER_SLICE:-100}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18700}
OUT=${OUT:-$ROOT/benchmarks/results/churn}
BACKEND_PORT=$((BASE_PORT + 1))
API_PORT=$((BASE_PORT + 2))
SIDECAR_PORT=$((BASE_PORT + 10))
ADMIN_PORT=$((BASE_PORT + 11))
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

log() { printf '[churn %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
for tool in nginx k6 curl taskset python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (tests/load/bench.sh installs it)"
done

if [[ -z "${BINS:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin stickyd)
    BINS="this=$TARGET/release/stickyd"
fi
read -r -a BIN_LIST <<<"$BINS"
for b in "${BIN_LIST[@]}"; do [[ -x "${b#*=}" ]] || die "no stickyd binary at ${b#*=}"; done
(cd "$ROOT" && cargo build --quiet --example churn_apiserver)
DRIVER="$TARGET/debug/examples/churn_apiserver"

# shellcheck source=SCRIPTDIR/procs.sh
. "$BENCH/procs.sh"
bench_scratch stickyd-churn
# The double's output and the sidecars' logs outlive the scratch directory.
save_logs() { mkdir -p "$OUT/logs" && cp "$WORK"/driver.* "$WORK"/stickyd-*.err "$OUT/logs/" 2>/dev/null || true; }
trap 'save_logs; bench_cleanup' EXIT

wait_for() { # seconds what command...: until the command succeeds
    local until=$((SECONDS + $1)) what=$2; shift 2
    until "$@" 2>/dev/null; do
        ((SECONDS < until)) || die "$what: not within the time allowed"
        sleep 0.1
    done
}
port_open() { (exec 3<>"/dev/tcp/$1/$2"); }
metric() { # name -> its value in the sidecar's /metrics (nan if absent or not answered in time)
    curl -s --max-time 20 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {print $2; f = 1} END {if (!f) print "nan"}'
}
all_listed() { [[ $(metric 'stickyd_endpoints{state="ready"}') == "$PODS" && $(metric stickyd_endpoints_synced) == 1 ]]; }
ticks() { awk '{print $14 + $15}' "$1"; } # a /proc stat file -> utime + stime
watch_stat() { # pid -> the stat file of its endpoint thread, if any
    local t
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) == stickyd-watch ]] && { echo "$t/stat"; return; }
    done
    echo ""
}
CLK_TCK=$(getconf CLK_TCK)

sed -e "s|@DIR@|$WORK|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" "$BENCH/backend.nginx.conf" >"$WORK/backend.nginx.conf"
taskset -c "$LOAD_CPU" nginx -c "$WORK/backend.nginx.conf" -e "$WORK/backend.err" 2>"$WORK/backend.stderr" &
STARTED+=($!)
wait_for 10 "the backend" port_open 127.0.0.1 "$BACKEND_PORT"

# The double reads its commands from a FIFO held open on fd 3; it exits when
# the script does.
mkfifo "$WORK/ctl"
taskset -c "$LOAD_CPU" "$DRIVER" "127.0.0.1:$API_PORT" "$WORK" "$PODS" "$PER_SLICE" "$HZ" "$SIDECAR_PORT" \
    <"$WORK/ctl" >"$WORK/driver.out" 2>"$WORK/driver.err" &
STARTED+=($!)
exec 3>"$WORK/ctl"
wait_for 60 "the apiserver double" grep -q '^ready' "$WORK/driver.out"
log "$(head -1 "$WORK/driver.out")"
ctl() { echo "$1" >&3; log "told the double: $1"; }
flip_lines_over() { (($(grep -c '^flips' "$WORK/driver.out") > $1)); }
flips_after() { # n -> "count,seconds" of the (n+1)-th flips line, once there
    wait_for 60 "the double's flip count" flip_lines_over "$1"
    grep '^flips' "$WORK/driver.out" | sed -n "$(($1 + 1))p" | awk '{print $2 "," $3}'
}

# An unsigned session cookie of the current form, ID.SID, pinned to pod-00000.
COOKIE="stickyd=$(python3 -c 'import base64 as b, hashlib as h; e = lambda x: b.urlsafe_b64encode(x).decode().rstrip("=")
print(e(h.sha256(b"stickyd/pod/pod-00000").digest()[:9]) + "." + e(b"churn1"))')"
URL="http://127.0.0.1:$SIDECAR_PORT/"

k6_run() { # seconds out.json
    K6_NO_USAGE_REPORT=true timeout $(($1 + 60)) taskset -c "$LOAD_CPU" k6 run --quiet --no-usage-report \
        -e URL="$URL" -e COOKIE="$COOKIE" -e RATE="$RATE" -e DURATION="${1}s" -e OUT="$2" \
        "$BENCH/rate.js" >"$2.log" 2>&1 || die "k6: $(tail -5 "$2.log")"
}

# One phase on the running sidecar: a CSV line.
phase() { # round name pid phase
    local round=$1 name=$2 pid=$3 what=$4 out="$WORK/k6-$1-$2-$4.json"
    local wstat t0 w0=0 u0 t1 w1=0 u1 s0 s1 flips=0,0 k6="nan,nan,nan,nan,nan,0,0,0"
    wstat=$(watch_stat "$pid")
    local nflips
    nflips=$(grep -c '^flips' "$WORK/driver.out" || true)
    [[ "$what" == steady ]] || ctl "churn on"
    s0=$(date +%s.%N); t0=$(ticks "/proc/$pid/stat"); [[ -z "$wstat" ]] || w0=$(ticks "$wstat"); u0=$(metric stickyd_endpoints_updates_total)
    if [[ "$what" == churn ]]; then sleep "$DURATION"; else k6_run "$DURATION" "$out"; fi
    s1=$(date +%s.%N); t1=$(ticks "/proc/$pid/stat"); [[ -z "$wstat" ]] || w1=$(ticks "$wstat"); u1=$(metric stickyd_endpoints_updates_total)
    if [[ "$what" != steady ]]; then ctl "churn off"; flips=$(flips_after "$nflips"); fi
    [[ "$what" == churn ]] || k6=$(python3 "$BENCH/churn_report.py" parse-k6 "$out")
    python3 -c "print(f'$round,$name,$what,$k6,{($t1 - $t0) / $CLK_TCK},{($w1 - $w0) / $CLK_TCK},{$s1 - $s0:.3f},{float(\"$u1\") - float(\"$u0\"):.0f},$flips')"
}

# One round of one binary: a fresh sidecar, listed, warmed up, three phases.
run_binary() { # round name path
    local round=$1 name=$2 bin=$3 pid
    taskset -c "$PROXY_CPU" env KUBECONFIG="$WORK/kubeconfig" STICKYD_ENDPOINTS=kubernetes STICKYD_NAMESPACE=bench \
        STICKYD_SERVICE=web STICKYD_POD_NAME=pod-00000 STICKYD_LISTEN="127.0.0.1:$SIDECAR_PORT" \
        STICKYD_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" STICKYD_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" \
        STICKYD_WORKER_THREADS=1 STICKYD_LOG=warn STICKYD_DRAIN_SECONDS=0 \
        "$bin" run 2>"$WORK/stickyd-$name-$round.err" &
    pid=$!
    STARTED+=("$pid")
    wait_for 60 "$name listing $PODS pods" all_listed
    local h
    h=$(curl -s -o /dev/null -D - -H "Cookie: $COOKIE" "$URL" | tr -d '\r')
    [[ $(head -1 <<<"$h" | awk '{print $2}') == 200 ]] || die "$name: $h"
    ! grep -qi '^set-cookie: stickyd=' <<<"$h" || die "$name did not serve its own session locally: $h"
    k6_run 2 "$WORK/warmup.json"
    for what in steady churn+load churn; do
        phase "$round" "$name" "$pid" "$what" | tee -a "$OUT/runs.csv" >&2
    done
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local p kept=()
    for p in "${STARTED[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
    STARTED=("${kept[@]}")
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
    for b in "${BIN_LIST[@]}"; do echo "binary ${b%%=*}: ${b#*=} ($(stat -c %y "${b#*=}" | cut -d. -f1))"; done
    echo "nproc: $(nproc)"
    lscpu | head -n 12 | sed 's/^/lscpu: /'
    echo "kernel: $(uname -sr)"
    echo "k6: $(k6 version | head -1)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2009
    echo "compiler processes before: $(ps -eo comm= | grep -cE '^(cargo|rustc|clippy-driver|cargo-clippy)$' || true)"
    echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE HZ=$HZ PODS=$PODS PER_SLICE=$PER_SLICE PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

echo "round,binary,phase,rps,p50_ms,p90_ms,p99_ms,max_ms,failed,dropped,requests,cpu_s,watch_thread_cpu_s,seconds,updates,flips,flip_seconds" >"$OUT/runs.csv"
n=${#BIN_LIST[@]}
for round in $(seq 1 "$ROUNDS"); do
    for ((i = 0; i < n; i++)); do
        b=${BIN_LIST[$(((i + round - 1) % n))]}
        log "round $round/$ROUNDS: ${b%%=*}"
        run_binary "$round" "${b%%=*}" "${b#*=}"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
python3 "$BENCH/churn_report.py" summarize "$OUT/runs.csv" >"$OUT/summary.md"
cat "$OUT/summary.md"
log "done: $OUT/summary.md"
