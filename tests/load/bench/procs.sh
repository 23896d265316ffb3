# shellcheck shell=bash
# Sourced by the benchmark scripts: a scratch directory and the processes
# started into it, all stopped (TERM, then KILL) and removed on exit.
#   bench_scratch PREFIX   sets WORK (with WORK/tmp), creates OUT, arms the trap
#   STARTED+=($!)          after starting a process in the background
#   cookie_for POD         an unsigned stickyd cookie value (ID.SID) naming POD

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

# ID: base64url of 9 bytes of SHA-256("stickyd/pod/" + name); SID: a fixed
# session id (6 zero bytes). A current value, so that a pinned request gets
# no Set-Cookie (a value without a SID is issued again once).
cookie_for() {
    python3 -c 'import base64,hashlib,sys; print(base64.urlsafe_b64encode(hashlib.sha256(b"stickyd/pod/"+sys.argv[1].encode()).digest()[:9]).decode().rstrip("=") + ".AAAAAAAA")' "$1"
}
