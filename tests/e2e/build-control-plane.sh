#!/usr/bin/env bash
# Builds the Kubernetes control plane used by the e2e tests from source:
# etcd, kube-apiserver, kube-controller-manager and kubectl.
#
# Why from source: the only registries reachable from CI are package
# registries (the Go module proxy among them), so no release tarball or
# container image can be fetched. The Go modules under tests/e2e/tools/ pin
# the exact versions.
#
# The binaries go to a cache OUTSIDE the work tree, keyed by version:
#   ${NFS3P_CACHE:-$HOME/.cache/nfs3-provisioner}/k8s-<version>/bin/
# If they are all there already, nothing is built (fast path). The Go build
# and module caches are left at their defaults so a rebuild is warm.
#
# Usage: tests/e2e/build-control-plane.sh [--print-dir]
# The last line printed on stdout is the bin directory; progress goes to
# stderr. So: K8S_BIN=$(tests/e2e/build-control-plane.sh | tail -n1)
# With --print-dir it only prints where the binaries are (or would be) and
# builds nothing.
set -euo pipefail

# The rest of the script is one { ... } block, which bash reads in full
# before running it: editing this file (e.g. a `git pull`) during a long
# build then cannot derail the build that is running.
{
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools="$here/tools"

# The versions come from the go.mod files, so they cannot drift from what is
# actually built.
# (`go mod tidy` may put the requirement in a block or on a `require` line.)
required_version() { # module go.mod
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2 } $1 == "require" && $2 == m { print $3 }' "$2"
}
k8s_version=$(required_version k8s.io/kubernetes "$tools/go.mod")
etcd_version=$(required_version go.etcd.io/etcd/server/v3 "$tools/etcd/go.mod")
if [[ -z $k8s_version || -z $etcd_version ]]; then
  echo "build-control-plane: cannot read versions from $tools/go.mod or $tools/etcd/go.mod" >&2
  exit 1
fi

cache_root=${NFS3P_CACHE:-${HOME:-/root}/.cache/nfs3-provisioner}
# The directory is keyed by the Kubernetes version only (that is the name the
# other scripts and people use); etcd is pinned together with it.
bin_dir="$cache_root/k8s-$k8s_version/bin"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

if [[ ${1:-} == --print-dir ]]; then
  echo "$bin_dir"
  exit 0
fi

all_present() {
  local b
  for b in "${binaries[@]}"; do
    [[ -x "$bin_dir/$b" ]] || return 1
  done
}

if all_present; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"

# Two test runs started at once must not build twice into the same place.
exec 9>"$bin_dir/../.build.lock"
flock 9
if all_present; then # someone else finished while we waited for the lock
  echo "$bin_dir"
  exit 0
fi

# CI has Go in /usr/local/go/bin but may not have it on PATH.
go=$(command -v go || true)
if [[ -z $go && -x /usr/local/go/bin/go ]]; then
  go=/usr/local/go/bin/go
fi
if [[ -z $go ]]; then
  echo "build-control-plane: no Go toolchain found (need Go >= 1.24)" >&2
  exit 1
fi

# Build into a scratch directory and move each binary into place only when
# the whole build succeeded: a killed build must not leave a truncated
# binary behind that the fast path above would then trust.
tmp=$(mktemp -d "$bin_dir/../build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# CGO off: static binaries, no C compiler needed (upstream builds these
# components the same way). GOFLAGS from the caller could switch modules to
# -mod=mod and silently rewrite go.sum, so they are reset.
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

# Without these the binaries report v0.0.0-master; kubectl would then warn
# about version skew and /version would be meaningless.
k8s_minor=${k8s_version#v1.}
k8s_minor=${k8s_minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done

start=$SECONDS
echo "build-control-plane: building Kubernetes $k8s_version and etcd $etcd_version into $bin_dir (a cold build takes a while)" >&2

(cd "$tools/etcd" && "$go" build -trimpath -ldflags="-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
echo "build-control-plane: etcd built after $((SECONDS - start))s" >&2

(cd "$tools" && "$go" build -trimpath -ldflags="$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
echo "build-control-plane: kubernetes built after $((SECONDS - start))s" >&2

for b in "${binaries[@]}"; do
  mv -f "$tmp/$b" "$bin_dir/$b"
done
echo "build-control-plane: done in $((SECONDS - start))s" >&2
echo "$bin_dir"
exit 0
}
