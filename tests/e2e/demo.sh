#!/usr/bin/env bash
# The provisioner at work, in one command on a fresh machine (`make demo`):
#   1. the loopback NFS server (nfs.sh up) and the local control plane
#      (cluster.sh up; the first run builds Kubernetes from source, ~10 min)
#   2. cargo build --release
#   3. the provisioner as a local process, with only the rights of the
#      ServiceAccount in deploy/base (sa-kubeconfig.sh)
#   4. every StorageClass + PVC + Pod of storageclass-examples/, then the
#      claims, volumes, directories and metrics that came of them
#   5. the claims of examples 01 (onDelete delete), 02 (retain) and
#      03 (archive) deleted, and the directories shown again
# Everything is left running; `make demo-down` stops it.
#
# There is no kubelet and no scheduler: pods never run (their claims are
# still provisioned), and for the WaitForFirstConsumer example the node
# selection a scheduler would make is set by hand.
#
# Usage: tests/e2e/demo.sh [up]   run the demo (again: it replaces the
#                                 provisioner of a previous demo)
#        tests/e2e/demo.sh stop   stop only the demo's provisioner
#        tests/e2e/demo.sh down   stop the provisioner, the control plane and
#                                 the NFS server (data is kept)
# Environment: E2E_DIR (default /tmp/nfs3p-e2e), CARGO_TARGET_DIR,
# DEMO_HTTP_ADDR (default 127.0.0.1:18080), DEMO_TIMEOUT (seconds to wait for
# claims to bind and volumes to go, default 60).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"

logs="$E2E_DIR/logs"
pidfile="$E2E_DIR/demo-provisioner.pid"
logfile="$logs/demo-provisioner.log"
sa_kubeconfig="$E2E_DIR/demo-provisioner.kubeconfig"
http_addr=${DEMO_HTTP_ADDR:-127.0.0.1:18080}
timeout=${DEMO_TIMEOUT:-60}
examples="$repo/storageclass-examples"
# The process name as the kernel keeps it (15 characters), for pid_of.
proc_name=nfs3-provisioner
ns=default

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

stop_provisioner() {
  stop_pid "$pidfile" "$proc_name"
}

cmd_down() {
  stop_provisioner
  "$here/cluster.sh" down
  log "stopped; \`make demo\` starts everything again (data and cluster state were kept)"
}

# ---------------------------------------------------------------- helpers

kubectl() { "$K8S_BIN/kubectl" "$@"; }

# Other nfs3-provisioner processes (not ours) would act on the same claims.
others_running() {
  local d pid mine
  mine=$(pid_of "$pidfile" "$proc_name" || true)
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid == "$mine" ]] && continue
    alive "$pid" || continue
    [[ $(cat "$d/comm" 2>/dev/null) == "${proc_name:0:15}" ]] && echo "$pid"
  done
  return 0
}

provisioner_log_tail() {
  echo "--- last lines of $logfile ---"
  tail -n 30 "$logfile" 2>/dev/null || true
}

show_exports() {
  local e
  for e in "$NFS_EXPORT1" "$NFS_EXPORT2"; do
    echo "$e  (NFS export, as seen on the server)"
    if [[ -z $(find "$e" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
      echo "    (empty)"
    else
      find "$e" -mindepth 1 -maxdepth 3 -printf '    %M %5U:%-5G  %P\n' | sort -k3
    fi
  done
}

show_metrics() {
  curl -s --max-time 5 "http://$http_addr/metrics" |
    grep -E '^nfs3_provisioner_(provision_total|delete_total|provision_duration_seconds_(count|sum)|in_flight|leader)' || true
}

# names KIND FILE...: names of the objects of KIND in the manifest files
names() {
  local kind=$1
  shift
  local f
  for f in "$@"; do
    kubectl get -f "$f" -o name --ignore-not-found 2>/dev/null || true
  done | sed -n "s|^$kind/||p"
}

pvc_phase() { kubectl -n "$ns" get pvc "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }

# ---------------------------------------------------------------- up

cmd_up() {
  local t0=$SECONDS t

  step "NFS server: nfs-ganesha on 127.0.0.1 (tests/e2e/nfs.sh up)"
  t=$SECONDS
  "$here/nfs.sh" up
  note "ready after $((SECONDS - t))s"

  step "control plane: etcd, kube-apiserver, kube-controller-manager (tests/e2e/cluster.sh up)"
  note "the first run builds them from source with Go: about 10 minutes"
  t=$SECONDS
  "$here/cluster.sh" up
  note "ready after $((SECONDS - t))s"
  eval "$("$here/cluster.sh" env)"
  export KUBECONFIG # admin kubeconfig, for kubectl here

  step "build: cargo build --release"
  if ! command -v cargo >/dev/null && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck source=/dev/null
    source "${HOME:-/root}/.cargo/env"
  fi
  t=$SECONDS
  (cd "$repo" && cargo build --release --bin nfs3-provisioner)
  local target_dir=${CARGO_TARGET_DIR:-$repo/target}
  [[ $target_dir == /* ]] || target_dir="$repo/$target_dir"
  local binary="$target_dir/release/nfs3-provisioner"
  [[ -x $binary ]] || die "no binary at $binary after the build"
  note "built in $((SECONDS - t))s: $binary"

  step "nfs3-provisioner check: can the provisioner work on $NFS_SERVER:$NFS_EXPORT1?"
  if ! timeout 60 "$binary" check --server "$NFS_SERVER" --share "$NFS_EXPORT1" | sed 's/^/    /'; then
    note "(check failed; carrying on to show what provisioning does)"
  fi

  step "provisioner: running as the ServiceAccount of deploy/base (only its RBAC)"
  "$here/sa-kubeconfig.sh" "$sa_kubeconfig" 2>&1 >/dev/null | sed 's/^/    /'
  stop_provisioner # a previous demo's
  if curl -s --max-time 2 -o /dev/null "http://$http_addr/healthz"; then
    die "something already listens on $http_addr; set DEMO_HTTP_ADDR to a free address"
  fi
  local others
  others=$(others_running)
  if [[ -n $others ]]; then
    note "WARNING: other nfs3-provisioner processes are running (pid $(echo "$others" | paste -sd, -));"
    note "if they watch this cluster, they act on the examples' claims too"
  fi
  mkdir -p "$logs"
  : >"$logfile"
  # No NFS_SERVER/NFS_PATH: every example class names its server and share.
  # NFS_PORTMAPPER_PORT stays 111 (rpcbind); no leader election: one instance.
  KUBECONFIG="$sa_kubeconfig" POD_NAMESPACE=nfs3-provisioner HTTP_ADDR="$http_addr" \
    RUST_LOG=${RUST_LOG:-info} \
    spawn "$pidfile" "$logfile" "$binary" run
  local pid i
  pid=$(<"$pidfile")
  for ((i = 0; i < 60; i++)); do
    alive "$pid" || {
      provisioner_log_tail
      die "the provisioner exited at start"
    }
    curl -sf --max-time 2 -o /dev/null "http://$http_addr/readyz" && break
    sleep 0.5
  done
  curl -sf --max-time 2 -o /dev/null "http://$http_addr/readyz" || {
    provisioner_log_tail
    die "the provisioner is not ready after 30s (http://$http_addr/readyz)"
  }
  note "pid $pid, ready; log $logfile"
  note "KUBECONFIG=$sa_kubeconfig POD_NAMESPACE=nfs3-provisioner HTTP_ADDR=$http_addr $binary run"

  step "kubectl apply -f storageclass-examples/ (as the cluster admin)"
  kubectl apply -f "$examples" | sed 's/^/    /'
  mapfile -t claims < <(names persistentvolumeclaim "$examples")
  ((${#claims[@]} > 0)) || die "no claims found in $examples"
  local c class
  for c in "${claims[@]}"; do
    class=$(kubectl -n "$ns" get pvc "$c" -o jsonpath='{.spec.storageClassName}')
    if [[ $(kubectl get storageclass "$class" -o jsonpath='{.volumeBindingMode}') == WaitForFirstConsumer ]]; then
      note "class $class is WaitForFirstConsumer, and no scheduler runs here to pick a node"
      note "for a pod of claim $c: setting by hand what it would set,"
      note "  volume.kubernetes.io/selected-node=demo-node"
      kubectl -n "$ns" annotate --overwrite pvc "$c" volume.kubernetes.io/selected-node=demo-node >/dev/null
    fi
  done

  step "waiting (up to ${timeout}s) for the claims to be Bound"
  local deadline=$((SECONDS + timeout)) pending=()
  t=$SECONDS
  while :; do
    pending=()
    for c in "${claims[@]}"; do
      [[ $(pvc_phase "$c") == Bound ]] || pending+=("$c")
    done
    ((${#pending[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      echo
      echo "NOT BOUND after ${timeout}s: ${pending[*]}"
      for c in "${pending[@]}"; do
        echo "--- kubectl describe pvc $c ---"
        kubectl -n "$ns" describe pvc "$c" || true
      done
      provisioner_log_tail
      exit 1
    fi
    sleep 1
  done
  note "all ${#claims[@]} claims Bound after $((SECONDS - t))s"

  step "kubectl get sc,pvc,pv"
  kubectl get storageclass
  echo
  kubectl -n "$ns" get pvc
  echo
  local volumes
  mapfile -t volumes < <(for c in "${claims[@]}"; do kubectl -n "$ns" get pvc "$c" -o jsonpath='{.spec.volumeName}{"\n"}'; done)
  kubectl get pv "${volumes[@]}" -o custom-columns='NAME:.metadata.name,CLAIM:.spec.claimRef.name,POLICY:.spec.persistentVolumeReclaimPolicy,ON-DELETE:.metadata.annotations.nfs3-provisioner\.io/on-delete,NFS:.spec.nfs.server,PATH:.spec.nfs.path'

  step "directories on the exports (mode uid:gid path)"
  note "(entries that are not the claims above are left by earlier demos or test runs)"
  show_exports

  step "metrics (curl http://$http_addr/metrics, excerpt)"
  show_metrics

  step "deleting the pods and claims of examples 01 (delete), 02 (retain), 03 (archive)"
  # Pods first: a pod using a claim keeps it (pvc-protection finalizer).
  local files=("$examples"/01-*.yaml "$examples"/02-*.yaml "$examples"/03-*.yaml)
  local -A pv_of=() dir_of=() share_of=() action_of=()
  local deleted=()
  mapfile -t deleted < <(names persistentvolumeclaim "${files[@]}")
  for c in "${deleted[@]}"; do
    local pv
    pv=$(kubectl -n "$ns" get pvc "$c" -o jsonpath='{.spec.volumeName}')
    pv_of[$c]=$pv
    dir_of[$c]=$(kubectl get pv "$pv" -o jsonpath='{.metadata.annotations.nfs3-provisioner\.io/directory}')
    share_of[$c]=$(kubectl get pv "$pv" -o jsonpath='{.metadata.annotations.nfs3-provisioner\.io/share}')
    action_of[$c]=$(kubectl get pv "$pv" -o jsonpath='{.metadata.annotations.nfs3-provisioner\.io/on-delete}')
    note "$c: volume $pv, onDelete ${action_of[$c]}, directory ${share_of[$c]}/${dir_of[$c]}"
  done
  local p
  for p in $(names pod "${files[@]}"); do
    kubectl -n "$ns" delete pod "$p" --ignore-not-found --wait=true --timeout="${timeout}s" | sed 's/^/    /'
  done
  for c in "${deleted[@]}"; do
    kubectl -n "$ns" delete pvc "$c" --ignore-not-found --wait=true --timeout="${timeout}s" | sed 's/^/    /'
  done

  step "waiting (up to ${timeout}s) for their volumes to be reclaimed and deleted"
  deadline=$((SECONDS + timeout))
  t=$SECONDS
  local left
  while :; do
    left=()
    for c in "${deleted[@]}"; do
      kubectl get pv "${pv_of[$c]}" >/dev/null 2>&1 && left+=("${pv_of[$c]}")
    done
    ((${#left[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      echo
      echo "VOLUMES NOT DELETED after ${timeout}s: ${left[*]}"
      for p in "${left[@]}"; do
        echo "--- kubectl describe pv $p ---"
        kubectl describe pv "$p" || true
      done
      provisioner_log_tail
      exit 1
    fi
    sleep 1
  done
  note "volumes gone after $((SECONDS - t))s"

  step "directories on the exports after deletion"
  show_exports

  step "what happened to each directory"
  local failed=0 dir share leaf archive present archived verdict
  for c in "${deleted[@]}"; do
    dir=${dir_of[$c]} share=${share_of[$c]} leaf=${dir_of[$c]##*/}
    # The archive sits beside the directory, named archived-<name>, plus
    # -<pv> when the name does not already hold the PV name (src/plan.rs).
    archive="archived-$leaf"
    [[ $leaf == *"${pv_of[$c]}"* ]] || archive+="-${pv_of[$c]}"
    [[ $dir == */* ]] && archive="${dir%/*}/$archive"
    present=no archived=no
    [[ -d $share/$dir ]] && present=yes
    [[ -d $share/$archive ]] && archived=yes
    case "${action_of[$c]}:$present:$archived" in
      delete:no:no) verdict="ok     delete:  $dir is gone" ;;
      retain:yes:no) verdict="ok     retain:  $dir is kept" ;;
      archive:no:yes) verdict="ok     archive: $dir is now $archive" ;;
      *)
        verdict="WRONG  ${action_of[$c]}: $dir (still there: $present; $archive there: $archived)"
        failed=1
        ;;
    esac
    note "$verdict"
  done

  step "metrics after deletion (excerpt)"
  show_metrics

  echo
  if ((failed)); then
    provisioner_log_tail
    echo "demo: reclaim did not do what the classes say (see WRONG above)"
    exit 1
  fi
  cat <<EOF
==> demo done in $((SECONDS - t0))s. Everything keeps running:
    eval "\$(tests/e2e/cluster.sh env)"       # KUBECONFIG and K8S_BIN (kubectl: \$K8S_BIN/kubectl)
    \$K8S_BIN/kubectl get pvc,pv
    \$K8S_BIN/kubectl delete -f storageclass-examples/07-second-server.yaml   # try another one
    curl -s http://$http_addr/metrics
    tail -f $logfile
    ls -l $NFS_EXPORT1 $NFS_EXPORT2
  Stop the provisioner, the control plane and the NFS server:
    make demo-down
EOF
}

case ${1:-up} in
  up) cmd_up ;;
  stop) stop_provisioner ;;
  down) cmd_down ;;
  *)
    echo "usage: $0 [up]|stop|down" >&2
    exit 2
    ;;
esac
