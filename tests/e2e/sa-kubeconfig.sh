#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as the ServiceAccount of deploy/base, so the
# provisioner run outside the cluster has exactly the rights the shipped RBAC gives.
#
# Usage: tests/e2e/sa-kubeconfig.sh [FILE]   (default $E2E_DIR/provisioner.kubeconfig)
# Needs a running cluster (tests/e2e/cluster.sh up). Prints the file's path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"
eval "$("$here/cluster.sh" env)"
out=${1:-$E2E_DIR/provisioner.kubeconfig}
kubectl="$K8S_BIN/kubectl"

# The RBAC part of the base only: without a scheduler and kubelets the Deployment
# would never run here, the provisioner runs as a local process instead.
for f in namespace serviceaccount clusterrole clusterrolebinding role rolebinding; do
  "$kubectl" apply -f "$repo/deploy/base/$f.yaml" >&2
done
token=$("$kubectl" create token nfs3-provisioner -n nfs3-provisioner --duration=24h)
server=$("$kubectl" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$("$kubectl" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
tmp=$(mktemp "$out.XXXXXX")
cat >"$tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: nfs3-provisioner
  user:
    token: $token
contexts:
- name: e2e
  context:
    cluster: e2e
    user: nfs3-provisioner
    namespace: nfs3-provisioner
current-context: e2e
KCFG
chmod 600 "$tmp"
mv -f "$tmp" "$out"
echo "$out"
