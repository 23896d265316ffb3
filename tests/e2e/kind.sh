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
# and loads it into the cluster (docker save, then kind load image-archive,
# which also works with Docker's containerd image store), installs
# ingress-nginx, creates the signing key's Secret (stickyd-mysvc in otherns,
# a random key), applies manifests/examples/externalname with the image set to
# IMAGE and a random drain token (a kustomize overlay: the patch and the
# replacement of docs/kubernetes.md, step 3), waits for the rollout, port-forwards the
# ingress controller to 127.0.0.1 and runs tests/k6/stickiness.js with
# BASE_URL pointing at the site (its host, mysite.example.com, resolved to
# the port-forward by curl --resolve and k6's hosts option). A trap stops the port-forward and deletes the
# cluster on exit.
#
# Usage: tests/e2e/kind.sh
#        tests/e2e/kind.sh --render   print the manifests it would apply (needs kubectl only)
# Environment:
#   CLUSTER               kind cluster name (default stickyd-e2e); must not exist
#   KIND_NODE_IMAGE       node image (default: the one pinned below for the
#                         installed kind version, by digest); Kubernetes >= 1.32
#   INGRESS_NGINX_VERSION ingress-nginx release (default controller-v1.15.1)
#   IMAGE                 image to build, load and run (default stickyd:0.1.0)
#   LOCAL_PORT            local port of the port-forward (default 18080)
#   KEEP_CLUSTER=1        keep the cluster after the run, for debugging
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-stickyd-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.15.1}"
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

# The node image of each kind release, by digest: the default node image of
# that release (pkg/apis/config/defaults/image.go at the release's tag, the
# image its release notes name). A tag alone can be pushed again; a digest
# cannot. For a kind version not listed, kind's own default is used.
node_image_for() {
  case "$1" in
    v0.26.0) echo "kindest/node:v1.32.0@sha256:c48c62eac5da28cdadcf560d1d8616cfa6783b58f0d94cf63ad1bf49600cb027" ;;
    v0.27.0) echo "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f" ;;
    v0.28.0) echo "kindest/node:v1.33.1@sha256:8d866994839cd096b3590681c55a6fa4a071fdaf33be7b9660e5697d2ed13002" ;;
    v0.29.0) echo "kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f" ;;
    v0.30.0) echo "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a" ;;
    v0.31.0) echo "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f" ;;
    v0.32.0) echo "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5" ;;
    *) return 1 ;;
  esac
}

# 32 random bytes as 64 hex digits, for the drain token and the signing key.
random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# A path to $2 relative to directory $1 (both absolute): kustomize takes
# resources by relative path only.
relative_to() {
  local dir=$1 up=""
  while [[ "${dir}" != "/" ]]; do
    up+="../"
    dir="$(dirname "${dir}")"
  done
  printf '%s%s' "${up}" "${2#/}"
}

# The externalname example with every stickyd image set to IMAGE and a random
# drain token in the sidecar and the app's preStop header, as a kustomize
# overlay in directory $1.
write_overlay() {
  local dir=$1 ref="${IMAGE}" name tag="" digest=""
  mkdir -p "${dir}"
  dir="$(cd "${dir}" && pwd -P)"
  if [[ "${ref}" == *@* ]]; then
    digest="${ref#*@}"
    ref="${ref%%@*}"
  fi
  if [[ "${ref##*/}" == *:* ]]; then
    tag="${ref##*:}"
    name="${ref%:*}"
  else
    name="${ref}"
    # docker build -t NAME tags NAME:latest.
    if [[ -z "${digest}" ]]; then tag=latest; fi
  fi
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "- $(relative_to "${dir}" "$(cd "${ROOT}" && pwd -P)/manifests/examples/externalname")"
    echo "images:"
    echo "- name: stickyd"
    echo "  newName: ${name}"
    if [[ -n "${tag}" ]]; then echo "  newTag: \"${tag}\""; fi
    if [[ -n "${digest}" ]]; then echo "  digest: ${digest}"; fi
    cat <<'OVERLAY'
patches:
- path: drain-token.yaml
# The token, copied into the app's preStop header (Authorization: Bearer TOKEN).
replacements:
- source:
    kind: Deployment
    name: mysvc
    fieldPath: spec.template.spec.initContainers.[name=stickyd].env.[name=STICKYD_DRAIN_TOKEN].value
  targets:
  - select:
      kind: Deployment
      name: mysvc
    fieldPaths:
    - spec.template.spec.containers.[name=app].lifecycle.preStop.httpGet.httpHeaders.[name=Authorization].value
    options:
      delimiter: " "
      index: 1
OVERLAY
  } >"${dir}/kustomization.yaml"
  cat >"${dir}/drain-token.yaml" <<TOKEN
apiVersion: apps/v1
kind: Deployment
metadata:
  name: mysvc
  namespace: otherns
spec:
  template:
    spec:
      initContainers:
      - name: stickyd
        env:
        - name: STICKYD_DRAIN_TOKEN
          value: "$(random_hex)"
TOKEN
}

if [[ "${1:-}" == "--render" ]]; then
  command -v kubectl >/dev/null 2>&1 || { rm -rf "${WORK}"; die "kubectl is not on PATH"; }
  write_overlay "${WORK}/overlay"
  kubectl kustomize "${WORK}/overlay"
  rm -rf "${WORK}"
  exit 0
fi

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

if [[ -z "${KIND_NODE_IMAGE}" ]]; then
  kind_version="$(kind version | awk '{print $2}')"
  if KIND_NODE_IMAGE="$(node_image_for "${kind_version}")"; then
    log "kind ${kind_version}: node image ${KIND_NODE_IMAGE}"
  else
    KIND_NODE_IMAGE=""
    log "kind ${kind_version} has no pinned node image here; using kind's default (set KIND_NODE_IMAGE to pin one)"
  fi
fi

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
# Through an archive: kind's loading straight from the Docker daemon cannot
# read images from Docker's containerd image store.
docker save -o "${WORK}/image.tar" "${IMAGE}"
kind load image-archive "${WORK}/image.tar" --name "${CLUSTER}"
rm -f "${WORK}/image.tar"

log "installing ingress-nginx ${INGRESS_NGINX_VERSION}"
k apply -f "${INGRESS_NGINX_MANIFEST}"
k -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=180s

log "creating the signing key's Secret stickyd-mysvc in otherns"
k apply -f "${ROOT}/manifests/examples/externalname/namespaces.yaml"
k -n otherns create secret generic stickyd-mysvc --from-literal=key="$(random_hex)"

log "applying manifests/examples/externalname with image ${IMAGE}"
write_overlay "${WORK}/overlay"
# The admission webhook may take a few seconds to answer after the rollout.
retry 30 k apply -k "${WORK}/overlay" || die "kubectl apply -k failed"
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
# kubectl itself in the background, not the k function: $! is then kubectl's
# own pid, which cleanup stops (a backgrounded function runs in a subshell,
# and killing that leaves kubectl running).
kubectl --context "${CONTEXT}" -n ingress-nginx port-forward --address 127.0.0.1 \
  svc/ingress-nginx-controller "${LOCAL_PORT}:80" >"${WORK}/port-forward.log" 2>&1 &
PF_PID=$!
# The example's Ingress has a host of its own (use-regex needs one): curl and
# k6 resolve it to the port-forward, and nothing else is looked up.
SITE_HOST="mysite.example.com"
BASE_URL="http://${SITE_HOST}:${LOCAL_PORT}/mysite"
site_curl() { curl --resolve "${SITE_HOST}:${LOCAL_PORT}:127.0.0.1" "$@"; }
retry 60 site_curl -fsS -o /dev/null "${BASE_URL}/" || die "${BASE_URL}/ never answered"
log "first answer: $(site_curl -fsS "${BASE_URL}/")"

log "running k6 against ${BASE_URL}"
printf '{"hosts": {"%s": "127.0.0.1"}}\n' "${SITE_HOST}" >"${WORK}/k6-config.json"
export BASE_URL
k6 run --config "${WORK}/k6-config.json" -e BASE_URL="${BASE_URL}" "${ROOT}/tests/k6/stickiness.js"
log "passed"
