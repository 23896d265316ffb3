# shellcheck shell=bash
# Sourced by the benchmark scripts: a scratch directory and the processes
# started into it, all stopped (TERM, then KILL) and removed on exit.
#   bench_scratch PREFIX   sets WORK (with WORK/tmp), creates OUT, arms the trap
#   STARTED+=($!)          after starting a process in the background
#   wait_port HOST PORT    until something listens there (10 s), else die
#   start_on PORT LOG CMD...  CMD in the background, its output appended to
#                          LOG, recorded in STARTED and PID, until it
#                          listens on 127.0.0.1:PORT
#   stop PID               TERM, then KILL after 5 s
#   median                 of the numbers on stdin, one per line
#   h2load_figures FILE    of h2load's output: req/s, requests answered, 2xx,
#                          other statuses, requests that got no answer
#   cookie_for POD [KEY]   a stickyd cookie value naming POD: unsigned (ID.SID), or
#                          signed with KEY (ID.SID.CREATED.REFRESHED.MAC), as deployed

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

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on $1:$2"
}

start_on() {
    local port=$1 log=$2
    shift 2
    "$@" >>"$log" 2>&1 &
    PID=$!
    STARTED+=("$PID")
    wait_port 127.0.0.1 "$port"
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

h2load_figures() {
    awk '
        /^finished in/ { for (i = 1; i <= NF; i++) if ($(i) ~ /req\/s,?$/) rps = $(i-1) }
        /^requests:/ { answered = $8; unanswered = $10 + $12 + $14 }
        /^status codes:/ { ok = $3; bad = $5 + $7 + $9 }
        END { gsub(/,/, "", rps); printf "%s %s %s %s %s\n", rps, answered, ok, bad, unanswered }' "$1"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }

# ID: base64url of 9 bytes of SHA-256("stickyd/pod/" + name); SID: a fixed
# session id (6 zero bytes). A current value, so that a pinned request gets
# no Set-Cookie (a value without a SID is issued again once).
cookie_for() {
    python3 - "$@" <<'PY'
import base64, hashlib, hmac, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
value = b64(hashlib.sha256(b"stickyd/pod/" + sys.argv[1].encode()).digest()[:9]) + ".AAAAAAAA"
if len(sys.argv) > 2:
    def b36(n):
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        out = ""
        while True:
            out = digits[n % 36] + out
            n //= 36
            if n == 0:
                return out
    now = b36(int(time.time()))
    value = f"{value}.{now}.{now}"
    value += "." + b64(hmac.new(sys.argv[2].encode(), value.encode(), hashlib.sha256).digest()[:16])
print(value)
PY
}
