#!/usr/bin/env bash
# Builds target/kube/kubeplane (etcd, kube-apiserver and kube-controller-manager
# in one binary) from the module in this folder, and reuses it while the stamp
# (go.mod, go.sum, main.go, this script and the Go version) is unchanged.
#
#   tests/kube/build.sh            # prints the binary's path on stdout
#   FORCE=1 tests/kube/build.sh    # rebuild even if the stamp matches
#
# Everything comes from the Go module proxy (k8s.io/kubernetes v1.37.2 and its
# staging modules at v0.37.2, go.etcd.io/etcd/server/v3 v3.7.0).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${KUBEPLANE_OUT:-$root/target/kube}
bin=$out/kubeplane
kube_version=v1.37.2

mkdir -p "$out"
stamp=$(cd "$here" && cat go.mod go.sum main.go build.sh | sha256sum | cut -c1-16)-$(go env GOVERSION)
if [[ -z "${FORCE:-}" && -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "kubeplane: up to date ($stamp)" >&2
  echo "$bin"
  exit 0
fi

ld=(-s -w)
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=(-X "$pkg.gitVersion=$kube_version"
       -X "$pkg.gitMajor=1" -X "$pkg.gitMinor=37"
       -X "$pkg.gitTreeState=clean"
       -X "$pkg.buildDate=1970-01-01T00:00:00Z")
done

echo "kubeplane: building $kube_version into $bin ..." >&2
start=$(date +%s)
(cd "$here" && go mod download && go build -trimpath -ldflags "${ld[*]}" -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
echo "$stamp" > "$out/stamp"
secs=$(( $(date +%s) - start ))
echo "kubeplane: built in ${secs}s, $(du -h "$bin" | cut -f1) ($(stat -c %s "$bin") bytes)" >&2
echo "$bin"
