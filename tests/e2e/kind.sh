#!/usr/bin/env bash
# End-to-end test of stickyd in a real cluster, in the story's topology:
#
#   k6 -> port-forward -> ingress-nginx -> Ingress (ns ingress-apps)
#      -> ExternalName Service mysvc-proxy -> Service mysvc (ns otherns)
#      -> stickyd sidecars -> demo apps
#
# NOT RUNNABLE ON MACHINES WITHOUT A DOCKER ENGINE. It needs, on PATH:
#   docker (a running engine, BuildKit), kind, kubectl, k6, curl
# and network access to pull the base images, the kind node image and the
# ingress-nginx manifest. It creates a kind cluster, builds the stickyd image
# and loads it into the cluster, installs ingress-nginx, applies
# manifests/examples/externalname, waits for the rollout, port-forwards the
# ingress controller to 127.0.0.1 and runs tests/k6/stickiness.js with
# BASE_URL pointing at the site. A trap deletes the cluster on exit.
#
# Usage: tests/e2e/kind.sh
# Environment:
#   CLUSTER               kind cluster name (default stickyd-e2e); must not exist
#   KIND_NODE_IMAGE       node image (default: kind's own); Kubernetes >= 1.32
#   INGRESS_NGINX_VERSION ingress-nginx release (default controller-v1.13.2)
#   IMAGE                 image tag to build (default stickyd:0.1.0; the
#                         manifests reference stickyd:0.1.0)
#   LOCAL_PORT            local port of the port-forward (default 18080)
#   KEEP_CLUSTER=1        keep the cluster after the run, for debugging
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-stickyd-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.13.2}"
INGRESS_NGINX_MANIFEST="https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
IMAGE="${IMAGE:-stickyd:0.1.0}"
LOCAL_PORT="${LOCAL_PORT:-18080}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
CONTEXT="kind-${CLUSTER}"
WORK="$(mktemp -d)"
CREATED=0
PF_PID=""

log() { printf '[kind.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
  local rc=$?
  if [[ -n "${PF_PID}" ]]; then
    kill "${PF_PID}" 2>/dev/null || true
    wait "${PF_PID}" 2>/dev/null || true
  fi
  if [[ "${rc}" -ne 0 && "${CREATED}" -eq 1 ]]; then
    log "failed (exit ${rc}); state of the cluster:"
    kubectl --context "${CONTEXT}" get pods -A -o wide >&2 || true
    kubectl --context "${CONTEXT}" -n otherns logs -l app.kubernetes.io/name=mysvc -c stickyd --tail=50 >&2 || true
    if [[ -s "${WORK}/port-forward.log" ]]; then cat "${WORK}/port-forward.log" >&2; fi
  fi
  if [[ "${CREATED}" -eq 1 ]]; then
    if [[ "${KEEP_CLUSTER}" == "1" ]]; then
      log "keeping cluster ${CLUSTER} (kind delete cluster --name ${CLUSTER})"
    else
      log "deleting cluster ${CLUSTER}"
      kind delete cluster --name "${CLUSTER}" >&2 || true
    fi
  fi
  rm -rf "${WORK}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

k() { kubectl --context "${CONTEXT}" "$@"; }

# Retries a command until it succeeds, up to $1 attempts 2 s apart.
retry() {
  local tries=$1 i
  shift
  for ((i = 1; i <= tries; i++)); do
    if "$@"; then return 0; fi
    sleep 2
  done
  return 1
}

for tool in docker kind kubectl k6 curl; do
  command -v "${tool}" >/dev/null 2>&1 || die "${tool} is not on PATH (this script needs Docker, kind, kubectl, k6 and curl)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
[[ -f "${ROOT}/tests/k6/stickiness.js" ]] || die "missing ${ROOT}/tests/k6/stickiness.js"
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  die "a kind cluster named ${CLUSTER} already exists; delete it or set CLUSTER"
fi

log "building ${IMAGE}"
docker build -t "${IMAGE}" "${ROOT}"

log "creating kind cluster ${CLUSTER}"
# ingress-nginx's kind manifest schedules the controller on a node labelled
# ingress-ready=true.
cat >"${WORK}/kind.yaml" <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  labels:
    ingress-ready: "true"
KIND
create=(kind create cluster --name "${CLUSTER}" --config "${WORK}/kind.yaml" --wait 120s)
if [[ -n "${KIND_NODE_IMAGE}" ]]; then
  create+=(--image "${KIND_NODE_IMAGE}")
fi
CREATED=1
"${create[@]}"

# A Service's named targetPort on a native sidecar port reaches the
# EndpointSlices from Kubernetes 1.32 on.
minor="$(k version -o json | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | tail -n 1)"
[[ -n "${minor}" && "${minor}" -ge 32 ]] || die "the cluster runs Kubernetes 1.${minor:-?}; 1.32 or newer is needed (set KIND_NODE_IMAGE)"

log "loading ${IMAGE} into the cluster"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

log "installing ingress-nginx ${INGRESS_NGINX_VERSION}"
k apply -f "${INGRESS_NGINX_MANIFEST}"
k -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=180s

log "applying manifests/examples/externalname"
# The admission webhook may take a few seconds to answer after the rollout.
retry 30 k apply -k "${ROOT}/manifests/examples/externalname" || die "kubectl apply -k failed"
k -n otherns rollout status deployment/mysvc --timeout=180s

# Every sidecar lists all three pods before the load starts.
log "waiting for the EndpointSlices to list 3 ready endpoints"
ready_endpoints() {
  local n
  n="$(k -n otherns get endpointslices -l kubernetes.io/service-name=mysvc \
    -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c '^true$' || true)"
  [[ "${n}" -eq 3 ]]
}
retry 60 ready_endpoints || die "Service mysvc never had 3 ready endpoints"

log "port-forwarding the ingress controller to 127.0.0.1:${LOCAL_PORT}"
k -n ingress-nginx port-forward --address 127.0.0.1 svc/ingress-nginx-controller "${LOCAL_PORT}:80" \
  >"${WORK}/port-forward.log" 2>&1 &
PF_PID=$!
BASE_URL="http://127.0.0.1:${LOCAL_PORT}/mysite"
retry 60 curl -fsS -o /dev/null "${BASE_URL}/" || die "${BASE_URL}/ never answered"
log "first answer: $(curl -fsS "${BASE_URL}/")"

log "running k6 against ${BASE_URL}"
export BASE_URL
k6 run -e BASE_URL="${BASE_URL}" "${ROOT}/tests/k6/stickiness.js"
log "passed"
