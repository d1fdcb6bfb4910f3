#!/usr/bin/env bash
# Checks that the e2e environment from cluster.sh does what the provisioner's
# tests rely on, without the provisioner itself:
#  - the apiserver is ready and `kubectl create token` works
#  - new namespaces get their `default` ServiceAccount and kube-root-ca.crt
#  - for a StorageClass with an out-of-tree provisioner, the PV controller
#    marks a new PVC with volume.kubernetes.io/storage-provisioner (what an
#    external provisioner waits for)
#  - a PV pre-bound to that PVC (claimRef) gets it Bound
#  - deleting the namespace/PV is not blocked by the protection finalizers
#  - both NFS exports are served over v3
# Usage: tests/e2e/cluster.sh up && tests/e2e/smoke.sh
# Ends with an "N passed, N failed" line; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"
eval "$("$here/cluster.sh" env)"
kubectl() { "$K8S_BIN/kubectl" "$@"; }

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...: run COMMAND, count and report it
  local what=$1
  shift
  if "$@" >/dev/null; then
    echo "ok   - $what"
    passed=$((passed + 1))
  else
    echo "FAIL - $what"
    failed=$((failed + 1))
  fi
}
# eventually SECONDS COMMAND...: retry COMMAND every half second
eventually() {
  local i n=$(($1 * 2))
  shift
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

suffix=$$
ns="e2e-smoke-$suffix"
sc="e2e-smoke-$suffix"
pv="e2e-smoke-$suffix"
provisioner=nfs3-provisioner.io/nfs

cleanup() {
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete pv "$pv" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete storageclass "$sc" --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup EXIT

readyz() { [[ $(kubectl get --raw /readyz) == ok ]]; }
check "apiserver /readyz" readyz
# The bin dir is .../k8s-<version>/bin; client and server must both say so.
want_version=${K8S_BIN%/bin}
want_version=${want_version##*/k8s-}
versions() { [[ $(kubectl version -o json | grep -c "\"gitVersion\": \"$want_version\"") == 2 ]]; }
check "kubectl and the server are $want_version" versions

kubectl create namespace "$ns" >/dev/null
check "default ServiceAccount appears in a new namespace" \
  eventually 30 kubectl -n "$ns" get serviceaccount default
check "kube-root-ca.crt appears in a new namespace" \
  eventually 30 kubectl -n "$ns" get configmap kube-root-ca.crt

token_user() {
  local token
  token=$(kubectl create token default -n "$ns") || return 1
  # Only the token, not the admin's client certificate, must be presented.
  kubectl --kubeconfig=/dev/null --server="$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')" \
    --certificate-authority="$E2E_DIR/k8s/pki/ca.crt" --token="$token" \
    auth whoami -o jsonpath='{.status.userInfo.username}'
}
token_ok() { [[ $(token_user) == "system:serviceaccount:$ns:default" ]]; }
check "kubectl create token works and the token authenticates" token_ok

kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $sc
provisioner: $provisioner
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: claim
  namespace: $ns
spec:
  storageClassName: $sc
  accessModes: [ReadWriteMany]
  resources:
    requests:
      storage: 1Mi
EOF
annotation() {
  [[ $(kubectl -n "$ns" get pvc claim -o jsonpath='{.metadata.annotations.volume\.kubernetes\.io/storage-provisioner}') == "$provisioner" ]]
}
check "PVC gets volume.kubernetes.io/storage-provisioner=$provisioner" eventually 30 annotation
pvc_finalizer() { [[ $(kubectl -n "$ns" get pvc claim -o jsonpath='{.metadata.finalizers}') == *kubernetes.io/pvc-protection* ]]; }
check "PVC has the pvc-protection finalizer" pvc_finalizer

# What the provisioner will do, by hand: a PV pre-bound to the claim. With
# the claim's uid in claimRef (as external provisioners set it) the PV
# controller binds at once; without it, only at its next resync (<= 15s).
uid=$(kubectl -n "$ns" get pvc claim -o jsonpath='{.metadata.uid}')
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
spec:
  storageClassName: $sc
  capacity:
    storage: 1Mi
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  claimRef:
    namespace: $ns
    name: claim
    uid: $uid
  nfs:
    server: $NFS_SERVER
    path: $NFS_EXPORT1
EOF
bound() { [[ $(kubectl -n "$ns" get pvc claim -o jsonpath='{.status.phase}') == Bound ]]; }
check "PVC becomes Bound to a PV pre-bound with claimRef" eventually 30 bound
pv_bound() { [[ $(kubectl get pv "$pv" -o jsonpath='{.status.phase}') == Bound ]]; }
check "PV is Bound" pv_bound

kubectl delete namespace "$ns" --wait=false >/dev/null
ns_gone() { ! kubectl get namespace "$ns" >/dev/null 2>&1; }
check "namespace with a bound PVC is deleted (namespace + pvc-protection controllers)" eventually 60 ns_gone
released() { [[ $(kubectl get pv "$pv" -o jsonpath='{.status.phase}') == Released ]]; }
check "PV becomes Released after its PVC is gone" eventually 30 released
kubectl delete pv "$pv" --wait=false >/dev/null
pv_gone() { ! kubectl get pv "$pv" >/dev/null 2>&1; }
check "Released PV is deleted (pv-protection finalizer removed)" eventually 30 pv_gone

check "NFS: nfs v3 answers" rpcinfo -t "$NFS_SERVER" nfs 3
check "NFS: mountd v3 answers" rpcinfo -t "$NFS_SERVER" mountd 3
if command -v showmount >/dev/null; then
  exports=$(showmount -e "$NFS_SERVER" 2>/dev/null || true)
  check "NFS: export1 is exported" grep -q "^$NFS_EXPORT1 " <<<"$exports"
  check "NFS: export2 is exported" grep -q "^$NFS_EXPORT2 " <<<"$exports"
fi

echo "smoke: $passed passed, $failed failed"
((failed == 0))
