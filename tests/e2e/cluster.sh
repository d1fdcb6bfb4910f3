#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the e2e tests and demos:
# etcd + kube-apiserver + kube-controller-manager (no kubelet, no
# scheduler: the provisioner only needs the API and the PV controllers),
# plus the loopback NFS server from nfs.sh.
#
# Usage: tests/e2e/cluster.sh COMMAND
#   up            build the binaries if needed (build-control-plane.sh),
#                 start the NFS server (nfs.sh up) and the control plane,
#                 wait until it is ready. Idempotent: a no-op when healthy;
#                 restarts whatever died or hangs.
#   down          stop what `up` started (by pid file), NFS server included;
#                 keeps data, certificates and logs
#   down --purge  same, then delete $E2E_DIR/k8s, the kubeconfig and the
#                 NFS exports
#   env           print `export` lines: KUBECONFIG, K8S_BIN, E2E_DIR and
#                 the NFS_* lines of nfs.sh env. Use: eval "$(cluster.sh env)"
#   status        say what is running
#   kill-apiserver   SIGKILL kube-apiserver only, as a crash would (chaos
#                    tests); etcd and the controller manager keep running
#   start-apiserver  start kube-apiserver again if it is not running, and
#                    wait until it is ready
#
# Ports (127.0.0.1 only, all non-default so nothing clashes with a real
# cluster on the machine): etcd 23790 (peer 23800), kube-apiserver 16443,
# kube-controller-manager 16257 (health only), each plus E2E_PORT_OFFSET.
# The NFS server is one per machine (fixed ports, one rpcbind): a second
# control plane shares it by setting NFS_E2E_DIR to the first one's E2E_DIR.
# State in ${E2E_DIR:-/tmp/nfs3p-e2e}: k8s/ (etcd data, pki/, pid files),
# kubeconfig (admin, group system:masters), logs/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"

k8s="$E2E_DIR/k8s"
pki="$k8s/pki"
logs="$E2E_DIR/logs"
kubeconfig="$E2E_DIR/kubeconfig"
kcm_kubeconfig="$k8s/kube-controller-manager.kubeconfig"

# E2E_PORT_OFFSET moves all four ports, so a second control plane (the
# benchmark's, with its own E2E_DIR) can run beside the tests' one.
off=${E2E_PORT_OFFSET:-0}
[[ $off =~ ^[0-9]+$ ]] || die "E2E_PORT_OFFSET must be a number, not '$off'"
etcd_port=$((23790 + off))
etcd_peer_port=$((23800 + off))
apiserver_port=$((16443 + off))
kcm_port=$((16257 + off))
apiserver_url="https://127.0.0.1:$apiserver_port"
etcd_url="http://127.0.0.1:$etcd_port"

# The controllers the provisioner's tests depend on, and a few cheap ones
# that keep the API objects looking like a normal cluster's:
#  - persistentvolume-binder: binds PVCs/PVs and, for a StorageClass with an
#    out-of-tree provisioner, sets volume.kubernetes.io/storage-provisioner
#    on the PVC, which is what external provisioners wait for
#  - persistentvolume-expander: resize, pvc-protection / pv-protection:
#    the kubernetes.io/pvc-protection and pv-protection finalizers
#  - serviceaccount / serviceaccount-token: `default` SA in new namespaces
#  - namespace, garbagecollector: namespace deletion and ownerReferences
#  - root-ca-certificate-publisher: kube-root-ca.crt in every namespace
#  - clusterrole-aggregation: fills the built-in admin/edit/view roles
# (Canonical names; the older short ones like persistentvolume-binder are
# still accepted as aliases.)
kcm_controllers=persistentvolume-binder-controller,persistentvolume-expander-controller
kcm_controllers+=,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller
kcm_controllers+=,serviceaccount-controller,serviceaccount-token-controller
kcm_controllers+=,namespace-controller,garbage-collector-controller
kcm_controllers+=,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller

# ---------------------------------------------------------------- pki

# ECDSA P-256 keys: quick to generate, and everything here accepts them.
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME CN: a self-signed CA.
ca() {
  ec_key "$pki/$1.key"
  openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/$1.crt"
}

# cert CA NAME SUBJECT EXTENSIONS: a key and a certificate signed by CA.
cert() {
  local ca=$1 name=$2 subject=$3 ext=$4
  ec_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile <(printf '%s\n' "$ext") -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$ca.srl"
}

# Generated once per state dir and then kept, so that kubeconfigs and
# service account tokens stay valid across `down`/`up`. A partial set (from
# a run killed half-way) is thrown away and made again.
ensure_pki() {
  local f complete=true
  for f in ca.crt ca.key sa.key sa.pub apiserver.crt apiserver.key admin.crt admin.key \
    kube-controller-manager.crt kube-controller-manager.key \
    front-proxy-ca.crt front-proxy-client.crt front-proxy-client.key; do
    [[ -s $pki/$f ]] || complete=false
  done
  $complete && return 0
  # Components still running from before hold the old credentials in
  # memory (the apiserver even reloads its CA file, so it would reject the
  # controller manager's old certificate while both look healthy).
  stop_pid "$k8s/kube-controller-manager.pid" kube-controller-manager
  stop_pid "$k8s/kube-apiserver.pid" kube-apiserver
  log "generating certificates in $pki"
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  ca ca nfs3p-e2e-ca
  # Service account token signing key pair (--service-account-signing-key-file
  # on the apiserver, --service-account-private-key-file on the controller
  # manager for the legacy token controller). RSA: the most widely supported.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  # Serving certificate: valid for every name a client here may use,
  # including the in-cluster service names and the first service IP.
  cert ca apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The certificate's CN is the user name and O the group: system:masters
  # is the superuser group; system:kube-controller-manager is the user the
  # built-in RBAC policy grants the controller manager's rights to.
  cert ca admin "/O=system:masters/CN=nfs3p-e2e-admin" "$client"
  cert ca kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  # Front proxy (request-header authentication), as in a kubeadm cluster.
  # Nothing here proxies, but without it the controller manager's delegated
  # authentication logs an error about the missing CA bundle every few
  # seconds, and API aggregation would not work.
  ca front-proxy-ca nfs3p-e2e-front-proxy-ca
  cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$client"
}

# write_kubeconfig FILE USER: certificates embedded, so the file can be
# copied elsewhere (into a test's temp dir, a container) and still work.
write_kubeconfig() {
  local file=$1 user=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nfs3p-e2e
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: nfs3p-e2e
  context:
    cluster: nfs3p-e2e
    user: $user
current-context: nfs3p-e2e
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$file" # atomic: a reader never sees half a file
}

# ---------------------------------------------------------------- health

# https_ok URL: does URL answer "ok", authenticating as the admin?
https_ok() {
  [[ $(curl -s --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$1" 2>/dev/null) == ok ]]
}
etcd_healthy() {
  [[ $(curl -s --max-time 3 "$etcd_url/health" 2>/dev/null) == *'"health":"true"'* ]]
}
apiserver_healthy() { https_ok "$apiserver_url/readyz"; }
kcm_healthy() {
  # The controller manager's own serving cert is self-signed (hence -k);
  # /healthz is open to anyone by default.
  [[ $(curl -sk --max-time 3 "https://127.0.0.1:$kcm_port/healthz" 2>/dev/null) == ok ]]
}

# ---------------------------------------------------------------- start

start_etcd() {
  # --unsafe-no-fsync: test data need not survive a power cut, and fsync on
  # a busy CI disk is what makes etcd (and so the apiserver) slow.
  spawn "$k8s/etcd.pid" "$logs/etcd.log" "$K8S_BIN/etcd" \
    --name=nfs3p-e2e \
    --data-dir="$k8s/etcd" \
    --listen-client-urls="$etcd_url" \
    --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="nfs3p-e2e=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync \
    --log-level=warn
}

start_apiserver() {
  # Plain HTTP to etcd is fine: both on loopback, etcd not reachable
  # from anywhere else. The service CIDR is configuration only (no
  # kube-proxy, no traffic); it must just not be empty.
  # --endpoint-reconciler-type=none: the apiserver would publish its
  # address as the endpoint of the `kubernetes` Service, but 127.0.0.1 is
  # not a valid endpoint and it would log that error every 10s. No pod
  # runs here to need that Service.
  spawn "$k8s/kube-apiserver.pid" "$logs/kube-apiserver.log" "$K8S_BIN/kube-apiserver" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$apiserver_port" \
    --cert-dir="$k8s/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --allow-privileged=true \
    --profiling=false
}

start_kcm() {
  # --use-service-account-credentials: each controller acts as its own
  # service account (system:controller:<name>), which the built-in RBAC
  # policy grants exactly the rights it needs; the manager's own identity
  # only has the rights to set that up. Same as kubeadm clusters.
  # --leader-elect=false: one instance, and no lease renewals to stall on
  # when the machine is busy.
  # KCM_API_QPS / KCM_API_BURST (optional, for benchmarks): the controllers'
  # client-side rate limit (--kube-api-qps, default 20; --kube-api-burst,
  # default 30). Unset: the flags are not passed. Only read when the manager
  # is (re)started: `up` leaves a healthy one running as it is.
  local rate=()
  [[ -n ${KCM_API_QPS:-} ]] && rate+=(--kube-api-qps="$KCM_API_QPS")
  [[ -n ${KCM_API_BURST:-} ]] && rate+=(--kube-api-burst="$KCM_API_BURST")
  spawn "$k8s/kube-controller-manager.pid" "$logs/kube-controller-manager.log" "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$kcm_kubeconfig" \
    --authentication-kubeconfig="$kcm_kubeconfig" \
    --authorization-kubeconfig="$kcm_kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --cert-dir="$k8s/kcm-certs" \
    --leader-elect=false \
    --controllers="$kcm_controllers" \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-name=nfs3p-e2e \
    --profiling=false \
    "${rate[@]}"
}

# ensure NAME FN TIMEOUT: make sure component NAME (start_FN, FN_healthy)
# is running and healthy, starting or restarting it as needed.
ensure() {
  local name=$1 fn=$2 timeout=$3 pidfile="$k8s/$1.pid" pid deadline
  if pid=$(pid_of "$pidfile" "$name"); then
    # Ours and running. Give it 10s in case it is just (re)starting or
    # reconnecting; if it still is not healthy it hangs: replace it.
    deadline=$((SECONDS + 10))
    until "${fn}_healthy"; do
      ((SECONDS < deadline)) || break
      sleep 0.5
    done
    "${fn}_healthy" && return 0
    log "$name ($pid) is running but not healthy; restarting it"
    stop_pid "$pidfile" "$name"
  fi
  "start_$fn"
  pid=$(<"$pidfile")
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if "${fn}_healthy"; then
      log "started $name ($pid)"
      return 0
    fi
    if ! alive "$pid"; then
      tail -n 20 "$logs/$name.log" >&2 || true
      die "$name exited at start; see $logs/$name.log"
    fi
    sleep 0.5
  done
  die "$name not healthy after ${timeout}s; see $logs/$name.log"
}

# The serviceaccount controller creates `default` in every namespace; once
# it exists in `default` the controller manager's informers and controllers
# are really working, not just serving /healthz.
wait_default_sa() {
  local i
  for ((i = 0; i < 120; i++)); do
    "$K8S_BIN/kubectl" --kubeconfig="$kubeconfig" -n default get serviceaccount default >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "the default ServiceAccount did not appear in 60s; see $logs/kube-controller-manager.log"
}

cmd_up() {
  mkdir -p "$k8s" "$logs"
  # One `up` at a time: two test runs starting together must not both
  # start an etcd on the same data dir.
  exec 9>"$k8s/.lock"
  flock 9

  # Tools this script needs beyond Debian's essential set (a minimal
  # machine may lack them); the NFS server's packages are nfs.sh's business.
  if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
    log "installing curl and openssl"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends curl openssl ca-certificates >&2; then
      apt-get update -q >&2 # only when needed: lists missing or stale
      apt-get install -y -q --no-install-recommends curl openssl ca-certificates >&2
    fi
  fi

  K8S_BIN=$("$here/build-control-plane.sh" | tail -n1)
  "$here/nfs.sh" up

  ensure_pki
  write_kubeconfig "$kubeconfig" admin
  write_kubeconfig "$kcm_kubeconfig" kube-controller-manager

  ensure etcd etcd 60
  ensure kube-apiserver apiserver 120
  ensure kube-controller-manager kcm 60
  wait_default_sa
  log "ready: eval \"\$($0 env)\" then kubectl get ns"
}

cmd_down() {
  local purge=false
  [[ ${1:-} == --purge ]] && purge=true
  # Reverse start order, so no component logs a storm of errors about the
  # one below it having gone.
  if [[ -d $k8s ]]; then
    stop_pid "$k8s/kube-controller-manager.pid" kube-controller-manager
    stop_pid "$k8s/kube-apiserver.pid" kube-apiserver
    stop_pid "$k8s/etcd.pid" etcd
  fi
  # A borrowed NFS server (NFS_E2E_DIR) belongs to the other control plane.
  local own_nfs=true
  [[ -n ${NFS_E2E_DIR:-} && ${NFS_E2E_DIR} != "$E2E_DIR" ]] && own_nfs=false
  if $purge; then
    ! $own_nfs || "$here/nfs.sh" down --purge
    rm -rf "$k8s" "$kubeconfig"
    log "purged $k8s and $kubeconfig"
  elif $own_nfs; then
    "$here/nfs.sh" down
  fi
}

cmd_kill_apiserver() {
  local pid
  if pid=$(pid_of "$k8s/kube-apiserver.pid" kube-apiserver); then
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
    log "killed kube-apiserver ($pid)"
  fi
  rm -f "$k8s/kube-apiserver.pid"
}

cmd_start_apiserver() {
  [[ -s $pki/ca.crt ]] || die "no cluster state in $k8s: run '$0 up' first"
  mkdir -p "$logs"
  exec 9>"$k8s/.lock"
  flock 9
  K8S_BIN=$("$here/build-control-plane.sh" --print-dir)
  ensure kube-apiserver apiserver 120
}

cmd_env() {
  echo "export E2E_DIR=$E2E_DIR"
  echo "export KUBECONFIG=$kubeconfig"
  echo "export K8S_BIN=$("$here/build-control-plane.sh" --print-dir)"
  "$here/nfs.sh" env
}

cmd_status() {
  local name pid
  for name in etcd kube-apiserver kube-controller-manager; do
    if pid=$(pid_of "$k8s/$name.pid" "$name"); then echo "$name: running ($pid)"; else echo "$name: not running"; fi
  done
  if [[ -s $pki/ca.crt ]] && apiserver_healthy; then echo "kube-apiserver: ready"; else echo "kube-apiserver: not ready"; fi
  "$here/nfs.sh" status
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  env) cmd_env ;;
  status) cmd_status ;;
  kill-apiserver) cmd_kill_apiserver ;;
  start-apiserver) cmd_start_apiserver ;;
  *)
    echo "usage: $0 up|down [--purge]|env|status|kill-apiserver|start-apiserver" >&2
    exit 2
    ;;
esac
