#!/usr/bin/env bash
# Offline checks of the deployment files: every YAML file parses, the
# kustomize base and overlays render, the Helm chart lints and renders with
# its default values and with each ci/*.yaml values file.
#
#   deploy/check.sh
#
# Needs python3 with PyYAML, kubectl (or kustomize) and helm. A missing
# kustomize or helm is built with `go install` into $(go env GOPATH)/bin.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
HELM_VERSION=${HELM_VERSION:-v3.17.3}
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.5.0}
gobin="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
# tests/deploy_manifests.rs builds the same pinned Helm here: reuse it.
helm_cache="${NFS3P_CACHE:-$HOME/.cache/nfs3-provisioner}/helm-$HELM_VERSION/bin"
PATH="$PATH:$gobin:$helm_cache"
fail=0

say() { printf '%s\n' "$*"; }
bad() { printf 'FAIL: %s\n' "$*"; fail=1; }

parse_yaml() { # FILE... ("-" for stdin): every document of every file parses
  python3 -c '
import sys, yaml
bad = 0
for f in sys.argv[1:]:
    try:
        list(yaml.safe_load_all(sys.stdin if f == "-" else open(f)))
    except Exception as e:
        print(f"FAIL: {f}: {e}")
        bad = 1
sys.exit(bad)
' "$@"
}

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml

mapfile -t files < <(find deploy storageclass-examples compose -type f \( -name '*.yaml' -o -name '*.yml' \) -not -path '*/templates/*' | sort)
files+=(docker-compose.yml)
if parse_yaml "${files[@]}"; then say "ok: ${#files[@]} YAML files parse"; else fail=1; fi

if command -v kubectl >/dev/null; then
  kustomize_build() { kubectl kustomize "$1"; }
else
  command -v kustomize >/dev/null || go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  kustomize_build() { kustomize build "$1"; }
fi
for k in deploy/base deploy/overlays/*/; do
  k=${k%/}
  if out=$(kustomize_build "$k") && parse_yaml - <<<"$out"; then
    say "ok: kustomize $k ($(grep -c '^kind:' <<<"$out") objects)"
  else
    bad "kustomize $k"
  fi
done

command -v helm >/dev/null || go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
chart=deploy/helm/nfs3-provisioner
if helm lint --strict "$chart" >/dev/null; then say "ok: helm lint $chart"; else bad "helm lint $chart"; fi
for values in "" "$chart"/ci/*.yaml; do
  args=()
  [[ -n $values ]] && args=(-f "$values")
  if helm lint --strict "$chart" "${args[@]}" >/dev/null &&
    out=$(helm template check "$chart" --namespace nfs3-provisioner "${args[@]}") &&
    parse_yaml - <<<"$out"; then
    say "ok: helm template ${values:-(defaults)} ($(grep -c '^kind:' <<<"$out") objects)"
  else
    bad "helm ${values:-(defaults)}"
  fi
done

exit "$fail"
