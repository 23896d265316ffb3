#!/usr/bin/env bash
# Smoke run of a real control plane on loopback: etcd, kube-apiserver (RBAC,
# ServiceAccount tokens, TLS from openssl), kube-scheduler and
# kube-controller-manager, all from target/kube/kubeplane (tests/kube/build.sh
# builds it when missing).
#
#   tests/kube/smoke.sh          # KEEP=1 keeps the temp dir and its logs;
#                                # HOLD=1 keeps the control plane up until Ctrl-C
#
# Needs: go (for the build), openssl, kubectl, curl, python3 (free ports).
# STICKYD_BIN=path/to/stickyd adds the server-side validation of what
# `stickyd inject` writes (tests/tools/kube.rs passes cargo's binary), and
# HELM_BIN=path/to/helm a server-side dry run of the Helm chart's install;
# without them those parts are skipped, with a line that says so.
# Every process listens on 127.0.0.1 only. No kubelet: the script writes the
# Node and the pods' status itself. 198.19.0.0/24 (the Service range of
# tests/podnet) is only the range Service ClusterIPs are written from
# (bookkeeping in etcd: there is no kube-proxy, nothing routes to it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${KUBEPLANE:-$("$here/build.sh")}

# Absolute: the script works in its temp dir.
if [[ -n ${STICKYD_BIN:-} ]]; then STICKYD_BIN=$(realpath -m -- "$STICKYD_BIN"); fi

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
# The discovery cache in the temp dir: a new port each run would otherwise
# leave a folder in ~/.kube/cache every time.
k() { kubectl --kubeconfig "$tmp/admin.kubeconfig" --cache-dir "$tmp/kube-cache" "$@"; }

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

# ---- server-side validation of everything the project ships ----------------
# Each object goes through the API server's decoding (--validate=strict: an
# unknown or duplicated field is an error, not a warning), defaulting,
# validation and admission, and is stored nowhere (--dry-run=server). The
# sets: every kustomization under manifests/ (rendered by kubectl kustomize),
# and what `stickyd inject` writes for the story's manifests and the inject
# fixtures. The namespaces a set names are created for real first (a server
# dry run of an object in a missing namespace is refused); a set's Namespace
# objects are applied for real, so the dry run finds them unchanged. Objects
# of cert-manager.io (manifests/injector's Issuers and Certificates) are
# skipped, with a line that says so, while this API server has no CRD for
# them. Every set is tried; then the script fails if the API server refused
# any object, with its messages.
cat > split.awk <<'AWK'
# A YAML stream, one object per document as kubectl kustomize and stickyd
# inject print them (top-level keys at column 0, metadata's at 2 spaces), into
# dir/objects.yaml and dir/objects.txt (kind/name), dir/namespaces.yaml (the
# Namespace objects, also in objects.yaml), dir/refs.txt (each
# metadata.namespace), and dir/skipped.yaml and dir/skipped.txt for the
# API groups in `skip` (space-separated).
function val(s) {
  sub(/^[^:]*:[ \t]*/, "", s); sub(/[ \t]+#.*$/, "", s); sub(/[ \t]+$/, "", s)
  gsub(/^["']|["']$/, "", s)
  return s
}
function flush(group) {
  if (content) {
    if (kind == "" || api == "" || name == "") {
      printf "document %d (ending at line %d): no apiVersion, kind or metadata.name\n", docs + 1, NR > "/dev/stderr"
      bad = 1
    }
    docs++
    group = (api ~ /\//) ? api : ""
    sub(/\/.*/, "", group)
    if (group != "" && index(" " skip " ", " " group " ")) {
      printf "---\n%s", buf > (dir "/skipped.yaml")
      print api " " kind "/" name > (dir "/skipped.txt")
    } else {
      printf "---\n%s", buf > (dir "/objects.yaml")
      print kind "/" name > (dir "/objects.txt")
      if (kind == "Namespace") printf "---\n%s", buf > (dir "/namespaces.yaml")
      if (ns != "") print ns > (dir "/refs.txt")
    }
  }
  buf = ""; kind = ""; api = ""; name = ""; ns = ""; content = 0; inmeta = 0
}
/^---([ \t]|$)/ { flush(); next }
{
  buf = buf $0 "\n"
  if ($0 ~ /^[^#[:space:]]/) { content = 1; inmeta = ($0 ~ /^metadata:[ \t]*$/) }
  if ($0 ~ /^kind:/) kind = val($0)
  else if ($0 ~ /^apiVersion:/) api = val($0)
  else if (inmeta && $0 ~ /^  name:/) name = val($0)
  else if (inmeta && $0 ~ /^  namespace:/) ns = val($0)
}
END { flush(); exit bad }
AWK
# The API groups whose kinds come from other projects' CRDs: skipped while
# this API server does not serve them, validated if it ever does.
crd_groups=(cert-manager.io)
skip_groups=()
served=$(k api-versions | cut -d/ -f1 | sort -u)
for group in "${crd_groups[@]}"; do
  grep -qxF "$group" <<<"$served" || skip_groups+=("$group")
done
refused=()
# validate LABEL FILE: the objects of the YAML stream FILE, through the API
# server; prints "ok: dry-run=server LABEL (N objects)" or adds the server's
# messages to refused.
validate() {
  local label=$1 file=$2 dir rc=0 want got nsname skipped=""
  dir=$(mktemp -d "$tmp/validate.XXXXXX")
  if ! awk -v dir="$dir" -v skip="${skip_groups[*]}" -f split.awk "$file" 2> "$dir/split.err"; then
    refused+=("$label: not split into objects: $(tr '\n' ' ' < "$dir/split.err")")
    return
  fi
  if [[ -s $dir/skipped.txt ]]; then
    step "skip: $label: $(wc -l < "$dir/skipped.txt") objects of ${skip_groups[*]} ($(cut -d' ' -f2 "$dir/skipped.txt" | paste -sd, | sed 's/,/, /g')): not validated, their CRDs are not installed in this API server"
  fi
  if [[ ! -s $dir/objects.txt ]]; then
    refused+=("$label: no object to validate")
    return
  fi
  # The namespaces: the set's own Namespace objects for real, then those its
  # objects name and no Namespace of the set makes (as a user's would exist).
  if [[ -s $dir/namespaces.yaml ]] &&
    ! k apply -f "$dir/namespaces.yaml" > "$dir/ns.out" 2>&1; then
    refused+=("$label: its Namespaces: $(tr '\n' ' ' < "$dir/ns.out")")
    sed 's/^/  /' "$dir/ns.out"
    return
  fi
  if [[ -s $dir/refs.txt ]]; then
    while read -r nsname; do
      k get namespace "$nsname" > /dev/null 2>&1 && continue
      k create namespace "$nsname" > /dev/null
      step "namespace $nsname created for $label (its objects name it; the set has no Namespace of it)"
    done < <(sort -u "$dir/refs.txt")
  fi
  want=$(wc -l < "$dir/objects.txt")
  k apply --dry-run=server --validate=strict -f "$dir/objects.yaml" > "$dir/out" 2>&1 || rc=$?
  sed 's/^/  /' "$dir/out"
  got=$(grep -c ' (server dry run)$' "$dir/out" || true)
  if [[ $rc -ne 0 || $got -ne $want ]]; then
    refused+=("$label: kubectl apply --dry-run=server: exit $rc, $got of $want objects accepted:
$(grep -v -e ' (server dry run)$' -e '^Warning: ' "$dir/out" | sed 's/^/    /')")
    return
  fi
  [[ -s $dir/skipped.txt ]] && skipped="; $(wc -l < "$dir/skipped.txt") of ${skip_groups[*]} skipped, see above"
  step "ok: dry-run=server $label ($got objects$skipped)"
}
# validate_kustomization DIR (relative to the project root)
validate_kustomization() {
  if ! k kustomize "$root/$1" > "$tmp/rendered.yaml" 2> "$tmp/rendered.err"; then
    refused+=("$1: kubectl kustomize: $(cat "$tmp/rendered.err")")
    return
  fi
  validate "$1" "$tmp/rendered.yaml"
}
step "server-side validation (kubectl apply --dry-run=server --validate=strict)"
for kustomization in "$root"/manifests/kustomization.yaml "$root"/manifests/*/kustomization.yaml \
  "$root"/manifests/examples/*/kustomization.yaml; do
  [[ -f $kustomization ]] || continue
  validate_kustomization "$(realpath --relative-to "$root" "$(dirname "$kustomization")")"
done
# stickyd inject's output: the story's manifests (tests/fixtures/migrate/
# story.yaml, the post's app, Ingresses and ExternalName Service as whole
# objects), as they are and with --from-ingress, and the fixtures of
# tests/tools/inject.rs that a cluster serves (passthrough.yaml has a kind of
# no API server; broken.yaml is not YAML).
if [[ -z ${STICKYD_BIN:-} ]]; then
  step "skip: stickyd inject output: STICKYD_BIN is not set (cargo test --test tools kube sets it; or STICKYD_BIN=target/debug/stickyd $0)"
elif [[ ! -x $STICKYD_BIN ]]; then
  refused+=("STICKYD_BIN=$STICKYD_BIN is not an executable file")
else
  for args in "tests/fixtures/migrate/story.yaml" "--from-ingress tests/fixtures/migrate/story.yaml" \
    "tests/fixtures/inject/plain.yaml" "tests/fixtures/inject/statefulset.yaml"; do
    read -ra argv <<<"$args"
    if ! (cd "$root" && "$STICKYD_BIN" inject "${argv[@]}") > injected.yaml 2> injected.err; then
      refused+=("stickyd inject $args: $(cat injected.err)")
      continue
    fi
    validate "stickyd inject $args" injected.yaml
  done
fi
# The Helm chart (charts/stickyd), installed as a server-side dry run: the
# API server validates every object it renders (and `lookup` reads the
# cluster). HELM_BIN names helm (tests/tools/kube.rs passes target/helm/helm).
# The webhook's certificate in `provided` mode (this API server has no
# cert-manager), signed by the smoke's CA.
if [[ -z ${HELM_BIN:-} ]]; then
  step "skip: helm install --dry-run=server: HELM_BIN is not set (tests/helm/build.sh builds helm)"
else
  for n in stickyd-helm stickyd-helm-app; do k create namespace "$n" > /dev/null; done
  export HELM_CACHE_HOME=$tmp/helm/cache HELM_CONFIG_HOME=$tmp/helm/config HELM_DATA_HOME=$tmp/helm/data
  if "$HELM_BIN" install stickyd "$root/charts/stickyd" --kubeconfig "$tmp/admin.kubeconfig" \
      --namespace stickyd-helm --dry-run=server \
      --set injector.tls.mode=provided --set "injector.tls.caBundle=$(base64 -w0 ca.crt)" \
      --set 'namespaces[0].namespace=stickyd-helm-app' --set 'namespaces[0].service=mysvc' \
      --set monitoring.dashboard.enabled=true > helm.out 2> helm.err; then
    n=$(sed -n '/^MANIFEST:/,$p' helm.out | grep -c '^kind:' || true)
    step "ok: helm install --dry-run=server charts/stickyd ($n objects)"
  else
    refused+=("helm install --dry-run=server charts/stickyd: $(cat helm.err)")
  fi
fi
if [[ ${#refused[@]} -gt 0 ]]; then
  echo "smoke: server-side validation: the API server refused objects of ${#refused[@]} set(s):" >&2
  printf -- '- %s\n' "${refused[@]}" >&2
  exit 1
fi

# ---- the project's manifests --------------------------------------------------
ns=stickyd-smoke
k create namespace "$ns" | sed 's/^/  /'
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
as_sa() {
  kubectl --server "$server" --certificate-authority "$tmp/ca.crt" --token "$token" \
    --cache-dir "$tmp/kube-cache" "$@"
}
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
# HOLD=1: keep the control plane up for a look by hand, until Ctrl-C (which
# then stops and removes everything, as at any other exit).
if [[ -n "${HOLD:-}" ]]; then
  echo "smoke: holding; in another shell: export KUBECONFIG=$tmp/admin.kubeconfig; Ctrl-C here stops it" >&2
  trap 'exit 0' INT TERM
  while :; do sleep 3600 & wait $!; done
fi
