#!/usr/bin/env bash
# Smoke run of a real control plane on loopback: etcd, kube-apiserver (RBAC,
# ServiceAccount tokens, TLS from openssl), kube-scheduler and
# kube-controller-manager, all from target/kube/kubeplane (tests/kube/build.sh
# builds it when missing).
#
#   tests/kube/smoke.sh          # KEEP=1 keeps the temp dir and its logs
#
# Needs: go (for the build), openssl, kubectl, curl, python3 (free ports).
# Every process listens on 127.0.0.1 only. No kubelet: the script writes the
# Node and the pods' status itself. 198.19.0.0/24 (the Service range of
# tests/podnet) is only the range Service ClusterIPs are written from
# (bookkeeping in etcd: there is no kube-proxy, nothing routes to it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${KUBEPLANE:-$("$here/build.sh")}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kubeplane.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  # Last started, first stopped: each one gets 15 s to stop before SIGKILL.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 75); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    for log in "$tmp"/*.log; do
      [[ -f $log ]] || continue
      echo "---- last lines of $(basename "$log")" >&2
      tail -n 25 "$log" >&2
    done
    echo "smoke: FAILED (rc=$rc)" >&2
  fi
  if [[ -n "${KEEP:-}" ]]; then echo "smoke: kept $tmp" >&2; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$(date +%s.%N)
step() { printf '[%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every half second.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      echo "smoke: timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
  step "ok: $what"
}

cd "$tmp"
step "binary $bin ($("$bin" version))"

# ---- keys and certificates --------------------------------------------------
ossl() { openssl "$@" 2>>openssl.out; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
  -subj "/CN=kubeplane-ca"
# sign NAME SUBJECT EXTENSIONS
sign() {
  ossl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -out "$1.crt" -extfile "$1.ext"
}
sign apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
client_ext="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
sign admin "/O=system:masters/CN=kubeplane-admin" "$client_ext"
sign kcm "/CN=system:kube-controller-manager" "$client_ext"
sign scheduler "/CN=system:kube-scheduler" "$client_ext"
# The ServiceAccount token signing key pair.
ossl genrsa -out sa.key 2048
ossl rsa -in sa.key -pubout -out sa.pub
step "certificates and service-account key made with $(openssl version | cut -d' ' -f1-2)"

etcd_port=$(free_port)
peer_port=$(free_port)
api_port=$(free_port)
kcm_port=$(free_port)
sched_port=$(free_port)
server=https://127.0.0.1:$api_port

kubeconfig() { # NAME: a kubeconfig with the client cert NAME.crt
  cat > "$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubeplane
  cluster:
    server: $server
    certificate-authority: $tmp/ca.crt
users:
- name: $1
  user:
    client-certificate: $tmp/$1.crt
    client-key: $tmp/$1.key
contexts:
- name: $1
  context: {cluster: kubeplane, user: $1}
current-context: $1
EOF
}
kubeconfig admin
kubeconfig kcm
kubeconfig scheduler
k() { kubectl --kubeconfig "$tmp/admin.kubeconfig" "$@"; }

# ---- etcd -------------------------------------------------------------------
"$bin" etcd --data-dir "$tmp/etcd" --unsafe-no-fsync \
  --listen-client-url "http://127.0.0.1:$etcd_port" \
  --listen-peer-url "http://127.0.0.1:$peer_port" > etcd.log 2>&1 &
pids+=($!)
wait_for 60 "etcd ready on 127.0.0.1:$etcd_port" grep -q 'etcd: ready' etcd.log

# ---- kube-apiserver ---------------------------------------------------------
"$bin" apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
  --tls-cert-file apiserver.crt --tls-private-key-file apiserver.key \
  --client-ca-file ca.crt \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file sa.pub \
  --service-account-signing-key-file sa.key \
  --service-cluster-ip-range 198.19.0.0/24 \
  --cert-dir "$tmp/apiserver-certs" \
  --profiling=false > apiserver.log 2>&1 &
pids+=($!)
wait_for 180 "kube-apiserver /readyz on $server" k get --raw /readyz
k version 2>&1 | sed 's/^/  /'
step "kubectl get ns"
k get ns | sed 's/^/  /'

# ---- the project's manifests --------------------------------------------------
ns=stickyd-smoke
k create namespace "$ns" | sed 's/^/  /'
step "kubectl apply --dry-run=server -f manifests/base/deployment.yaml"
k -n "$ns" apply --dry-run=server -f "$root/manifests/base/deployment.yaml" | sed 's/^/  /'
mkdir overlay
cat > overlay/kustomization.yaml <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $ns
resources:
- $(realpath --relative-to overlay "$root/manifests/base")
EOF
step "kubectl apply -k (manifests/base in namespace $ns)"
k apply -k overlay | sed 's/^/  /'
# The project's Role, as the API server's RBAC authorizer reads it.
sa=system:serviceaccount:$ns:stickyd
step "RBAC: can $sa watch endpointslices? $(k -n "$ns" auth can-i watch endpointslices.discovery.k8s.io --as "$sa" || true)"
step "RBAC: can $sa list secrets? $(k -n "$ns" auth can-i list secrets --as "$sa" || true)"

# ---- a Node and kube-scheduler ---------------------------------------------
# No kubelet runs: the Node is written here, Ready, with room for the pods
# (its address is the node's of tests/podnet). It sends no heartbeat: the node
# lifecycle controller marks it, and its pods, not ready after about 40 s,
# long after these checks.
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: node-0
  labels: {kubernetes.io/hostname: node-0, kubernetes.io/os: linux}
EOF
k patch node node-0 --subresource status --type merge -p "{\"status\": {
  \"capacity\": {\"cpu\": \"8\", \"memory\": \"16Gi\", \"pods\": \"110\"},
  \"allocatable\": {\"cpu\": \"8\", \"memory\": \"16Gi\", \"pods\": \"110\"},
  \"addresses\": [{\"type\": \"InternalIP\", \"address\": \"198.18.0.1\"}],
  \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\", \"reason\": \"KubeletReady\",
    \"lastHeartbeatTime\": \"$now\", \"lastTransitionTime\": \"$now\"}]}}" > /dev/null
step "Node node-0 written, Ready"
"$bin" scheduler \
  --kubeconfig scheduler.kubeconfig \
  --authentication-kubeconfig scheduler.kubeconfig \
  --authorization-kubeconfig scheduler.kubeconfig \
  --bind-address 127.0.0.1 --secure-port "$sched_port" \
  --leader-elect=false > scheduler.log 2>&1 &
pids+=($!)
wait_for 120 "kube-scheduler /healthz on 127.0.0.1:$sched_port" \
  curl -sfk "https://127.0.0.1:$sched_port/healthz"

# ---- kube-controller-manager -------------------------------------------------
"$bin" controller-manager \
  --kubeconfig kcm.kubeconfig \
  --authentication-kubeconfig kcm.kubeconfig \
  --authorization-kubeconfig kcm.kubeconfig \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --leader-elect=false \
  --use-service-account-credentials \
  --service-account-private-key-file sa.key \
  --root-ca-file ca.crt \
  --cluster-signing-cert-file ca.crt --cluster-signing-key-file ca.key \
  --controllers '*' \
  --profiling=false > controller-manager.log 2>&1 &
pids+=($!)
wait_for 120 "kube-controller-manager /healthz on 127.0.0.1:$kcm_port" \
  curl -sfk "https://127.0.0.1:$kcm_port/healthz"

count() { # KIND SELECTOR -> number of objects
  k -n "$ns" get "$1" -l "$2" -o name 2>/dev/null | wc -l
}
at_least() { [[ $(count "$1" "$2") -ge $3 ]]; }
app=app.kubernetes.io/name=mysvc
wait_for 120 "Deployment mysvc has a ReplicaSet" at_least replicasets "$app" 1
wait_for 120 "ReplicaSet made 3 Pods" at_least pods "$app" 3
wait_for 120 "EndpointSlice for Service mysvc" \
  at_least endpointslices.discovery.k8s.io kubernetes.io/service-name=mysvc 1
scheduled() {
  [[ $(k -n "$ns" get pods -l "$app" -o 'jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c '^node-0$') -eq 3 ]]
}
wait_for 120 "kube-scheduler bound the 3 Pods to node-0" scheduled
k -n "$ns" get deploy,rs,pods,svc,endpointslices -o wide | sed 's/^/  /'

# ServiceAccount tokens: the token controller fills a legacy token Secret; the
# API server signs a bound token (TokenRequest) with sa.key.
wait_for 60 "ServiceAccount default made by the serviceaccount controller" \
  k -n "$ns" get serviceaccount default
k -n "$ns" apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: stickyd-token
  annotations:
    kubernetes.io/service-account.name: stickyd
type: kubernetes.io/service-account-token
EOF
has_token() { [[ -n $(k -n "$ns" get secret stickyd-token -o 'jsonpath={.data.token}') ]]; }
wait_for 60 "token controller filled Secret stickyd-token" has_token
token=$(k -n "$ns" create token stickyd --duration 10m)
as_sa() { kubectl --server "$server" --certificate-authority "$tmp/ca.crt" --token "$token" "$@"; }
step "bound token of stickyd: $(as_sa auth whoami -o 'jsonpath={.status.userInfo.username}')"
step "with it: list endpointslices in $ns: $(as_sa -n "$ns" get endpointslices -o name | tr '\n' ' ')"
if as_sa -n "$ns" get secrets > forbidden.out 2>&1; then
  echo "smoke: the stickyd token could list secrets" >&2
  exit 1
fi
step "with it: list secrets refused: $(head -n1 forbidden.out)"

# ---- what a kubelet would write -------------------------------------------
# Each Pod Running and Ready with an address (those tests/podnet gives its
# pods, 198.18.0.10 + i; nothing here sends traffic to them), and the
# EndpointSlice controller publishes the pods as ready endpoints.
i=0
for pod in $(k -n "$ns" get pods -l "$app" -o 'jsonpath={.items[*].metadata.name}'); do
  ip=198.18.0.$((10 + i))
  i=$((i + 1))
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  k -n "$ns" patch pod "$pod" --subresource status --type merge -p "{\"status\": {
    \"phase\": \"Running\", \"podIP\": \"$ip\", \"podIPs\": [{\"ip\": \"$ip\"}], \"hostIP\": \"198.18.0.1\",
    \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\", \"lastTransitionTime\": \"$now\"},
                     {\"type\": \"ContainersReady\", \"status\": \"True\", \"lastTransitionTime\": \"$now\"},
                     {\"type\": \"PodScheduled\", \"status\": \"True\", \"lastTransitionTime\": \"$now\"}]}}" > /dev/null
done
step "set the $i pods Running and Ready"
ready_endpoints() {
  k -n "$ns" get endpointslices -l kubernetes.io/service-name=mysvc -o \
    'jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}'
}
three_ready() { [[ $(ready_endpoints | grep -c .) -eq 3 ]]; }
wait_for 60 "EndpointSlice of mysvc lists the 3 pods as ready" three_ready
k -n "$ns" get endpointslices -l kubernetes.io/service-name=mysvc -o wide | sed 's/^/  /'

# A real API server refuses loopback endpoint addresses (what an API server
# double may well accept): tests against it need pod addresses off loopback.
cat > loopback-slice.yaml <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: loopback
  labels: {kubernetes.io/service-name: mysvc}
addressType: IPv4
endpoints:
- addresses: ["127.1.0.1"]
ports:
- {name: http, port: 8080, protocol: TCP}
EOF
if k -n "$ns" apply --dry-run=server -f loopback-slice.yaml > loopback.out 2>&1; then
  echo "smoke: the API server took a loopback endpoint address" >&2
  exit 1
fi
step "EndpointSlice with 127.1.0.1 refused: $(grep -o 'may not be in the loopback range[^"]*' loopback.out | head -n1)"

step "stopping"
echo "smoke: PASSED"
