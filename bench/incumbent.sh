#!/usr/bin/env bash
# Builds (once) and locates the real incumbent, nfs-subdir-external-provisioner
# v4.0.2, from the source kept in ../shared/incumbent beside the repository
# (INCUMBENT_SRC overrides). The binary is cached under
# $NFS3P_CACHE/incumbent-v4.0.2-<hash of the source and Go version>/, so a
# changed source or toolchain builds afresh and an unchanged one never does.
#
# Usage: bench/incumbent.sh path   build if needed; print the binary's path
#        bench/incumbent.sh meta   build if needed; print KEY=VALUE lines
#                                  (tag, commit, lib commit, go version, path)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${INCUMBENT_SRC:-$repo/../shared/incumbent}
cache=${NFS3P_CACHE:-$HOME/.cache/nfs3-provisioner}
export PATH=$PATH:/usr/local/go/bin

die() { echo "bench/incumbent.sh: $*" >&2; exit 1; }

[[ -x $src/build.sh && -d $src/src ]] ||
  die "no incumbent source at $src (expected ../shared/incumbent beside the repository, with build.sh and src/; set INCUMBENT_SRC, or INCUMBENT_BIN to a built binary)"
command -v go >/dev/null || die "Go is needed to build the incumbent (go not on PATH nor in /usr/local/go/bin)"
src=$(cd "$src" && pwd)

go_version=$(go env GOVERSION)
# Content key: every file of the source (names and bytes) and the Go version.
key=$( { (cd "$src" && find . -type f ! -name '*.log' -print0 | LC_ALL=C sort -z |
          xargs -0 sha256sum); echo "$go_version"; } | sha256sum | cut -c1-12)
dir=$cache/incumbent-v4.0.2-$key
bin=$dir/nfs-subdir-external-provisioner

if [[ ! -x $bin ]]; then
  echo "bench/incumbent.sh: building the incumbent into $dir (about 2.5 min cold)" >&2
  mkdir -p "$dir"
  "$src/build.sh" "$bin.tmp" >&2
  mv "$bin.tmp" "$bin"
fi

case ${1:-path} in
  path) echo "$bin" ;;
  meta)
    readme=$src/README.md
    # The README names the upstream tag and commit of each part it keeps.
    # (A reference may be wrapped across lines: join them first.)
    commits=$(tr -s ' \n' '  ' <"$readme" | grep -oE 'commit [0-9a-f]{40}' | cut -d' ' -f2)
    commit=$(sed -n 1p <<<"$commits")
    lib_commit=$(sed -n 2p <<<"$commits")
    echo "tag=v4.0.2"
    echo "commit=${commit:-unknown}"
    echo "lib=sig-storage-lib-external-provisioner v6.0.0 ${lib_commit:-unknown}"
    echo "go=$go_version"
    echo "key=$key"
    echo "path=$bin"
    ;;
  *) die "usage: $0 [path|meta]" ;;
esac
