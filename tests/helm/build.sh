#!/usr/bin/env bash
# Builds target/helm/helm from helm.sh/helm/v4 at the version below, through
# the Go module proxy (go install PACKAGE@VERSION: the module's own go.mod and
# go.sum, checked against the checksum database), and reuses it while its
# stamp (this version and the Go version) matches. Prints the binary's path.
#
#   tests/helm/build.sh            # FORCE=1 rebuilds; HELM_OUT=DIR builds elsewhere
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=v4.3.2
out=${HELM_OUT:-$root/target/helm}
bin=$out/helm
stamp=$version-$(go env GOVERSION)-$(sha256sum "$here/build.sh" | cut -c1-12)

if [[ -z "${FORCE:-}" && -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "helm: up to date ($stamp)" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$out"
echo "helm: building $version into $bin ..." >&2
start=$(date +%s)
GOBIN="$out" GOFLAGS=-trimpath go install \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" "helm.sh/helm/v4/cmd/helm@$version"
echo "$stamp" > "$out/stamp"
echo "helm: built in $(( $(date +%s) - start ))s, $(du -h "$bin" | cut -f1)" >&2
echo "$bin"
