#!/usr/bin/env bash
# The container images and the Compose playground, with whatever engine this
# machine has: Docker when its daemon answers, otherwise podman (Debian 12's
# podman 4.3 works). `make image`, `make compose-up`/`compose-down` and
# `make test-image` call this script.
#
# Usage: image/image.sh COMMAND [ARGS]
#   build [IMAGE]     the provisioner image (default $IMAGE, else nfs3-provisioner:dev).
#                     IMAGE_BUILD=dockerfile  ./Dockerfile (its base images come from a registry)
#                     IMAGE_BUILD=host        static musl binary built here, then
#                                             image/Containerfile.prebuilt (FROM scratch: offline)
#                     IMAGE_BUILD=auto        (default) dockerfile if the registry answers, else host
#   nfs-image         the NFS-Ganesha image of docker-compose.yml, from Debian's
#                     slim image or, without a registry, from the local base below
#   debian-base       a Debian bookworm base image made locally (debootstrap, root)
#   compose ARGS...   docker compose, podman compose or podman-compose, whichever is here
#   compose-up        both images, then `compose up -d` (no registry needed)
#   compose-down      `compose down` (add -v to drop the exported data)
#   env               `export` lines for tests: engine, its configuration, image names
#   install           as root: podman, runc, catatonit, debootstrap, musl-tools (apt-get), the
#                     musl Rust target (rustup) and podman-compose (PyPI, in a virtualenv)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-nfs3-provisioner:dev}
# docker-compose.yml names the provisioner image by this.
export NFS3P_IMAGE=${NFS3P_IMAGE:-$IMAGE}
NFS_IMAGE=${NFS3P_NFS_IMAGE:-nfs3-provisioner-nfs-ganesha:dev}
DEBIAN_BASE=${DEBIAN_BASE:-nfs3-provisioner-debian:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What ./Dockerfile and compose/nfs-ganesha/Dockerfile start from by default;
# the registry probe pulls the small runtime image only.
RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot
DEBIAN_SLIM=docker.io/library/debian:bookworm-slim
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}

die() {
  echo "image.sh: $*" >&2
  exit 1
}
say() { echo "image.sh: $*" >&2; }

engine() {
  if [[ -n ${CONTAINER_ENGINE:-} ]]; then
    echo "$CONTAINER_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null; then
    echo podman
  else
    die "no container engine: neither a Docker daemon that answers nor podman (as root, '$0 install' installs podman)"
  fi
}

ENGINE=
# `install` brings the engine: every other command needs one.
if [[ ${1:-} != install ]]; then
  ENGINE=$(engine)
fi
# Without systemd as PID 1 (CI containers, these test machines) podman's
# defaults fail: systemd cgroups, crun and raised ulimits are refused there.
if [[ $ENGINE == podman && -z ${CONTAINERS_CONF:-} && $(cat /proc/1/comm 2>/dev/null) != systemd ]]; then
  export CONTAINERS_CONF=$repo/image/containers.conf
fi

has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# True when IMAGE is here or can be pulled: the registry is reachable.
pullable() {
  has_image "$1" && return 0
  timeout "$PULL_TIMEOUT" "$ENGINE" pull -q "$1" >/dev/null 2>&1
}

build_dockerfile() {
  say "building $1 from ./Dockerfile with $ENGINE"
  if [[ $ENGINE == docker ]]; then
    DOCKER_BUILDKIT=1 docker build -t "$1" "$repo"
  else
    # --layers keeps the build stages cached; the cache mounts need buildah 1.24+.
    podman build --layers -t "$1" "$repo"
  fi
}

musl_target() { echo "$(uname -m)-unknown-linux-musl"; }

# The static binary, built on this machine: what the Dockerfile's builder stage
# does, without its Rust image. Prints the binary's path.
build_binary() {
  local target cc_var target_dir bin
  target=$(musl_target)
  command -v musl-gcc >/dev/null || die "musl-gcc not found: apt-get install musl-tools (or '$0 install')"
  command -v readelf >/dev/null || die "readelf not found: apt-get install binutils"
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
  fi
  # ring compiles C and assembly for the target: with musl's gcc wrapper.
  cc_var="CC_${target//-/_}"
  target_dir=${MUSL_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}}
  say "building the static binary ($target) in $target_dir"
  (cd "$repo" && env "$cc_var=musl-gcc" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target "$target" --bin nfs3-provisioner \
    --target-dir "$target_dir" >&2)
  bin=$target_dir/$target/release/nfs3-provisioner
  if readelf -l "$bin" | grep -q 'program interpreter'; then
    die "$bin is not statically linked"
  fi
  "$bin" --help >/dev/null
  echo "$bin"
}

build_host() {
  local image=$1 bin ctx
  [[ -r $CA_BUNDLE ]] || die "no CA bundle at $CA_BUNDLE: apt-get install ca-certificates"
  bin=$(build_binary)
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064 # the context's path is known now
  trap "rm -rf '$ctx'" EXIT
  cp -r "$repo/image/rootfs/etc" "$ctx/etc"
  mkdir -p "$ctx/etc/ssl/certs"
  cp "$CA_BUNDLE" "$ctx/etc/ssl/certs/ca-certificates.crt"
  cp "$bin" "$ctx/nfs3-provisioner"
  cp "$repo/image/Containerfile.prebuilt" "$ctx/Containerfile"
  chmod 0644 "$ctx/etc/passwd" "$ctx/etc/group" "$ctx/etc/ssl/certs/ca-certificates.crt"
  chmod 0755 "$ctx/nfs3-provisioner"
  say "assembling $image (FROM scratch) with $ENGINE"
  "$ENGINE" build -f "$ctx/Containerfile" -t "$image" "$ctx"
}

cmd_build() {
  local image=${1:-$IMAGE} mode=${IMAGE_BUILD:-auto}
  if [[ $mode == auto ]]; then
    if pullable "$RUNTIME_IMAGE"; then mode=dockerfile; else mode=host; fi
    say "IMAGE_BUILD=auto: $mode (the registry $([[ $mode == host ]] && echo "does not answer" || echo answers))"
  fi
  case $mode in
    dockerfile) build_dockerfile "$image" ;;
    host) build_host "$image" ;;
    *) die "IMAGE_BUILD must be auto, dockerfile or host, not '$mode'" ;;
  esac
  "$ENGINE" image inspect --format '{{.Size}}' "$image" |
    awk -v i="$image" '{ printf "image.sh: %s: %.1f MB\n", i, $1 / 1e6 }' >&2
}

cmd_debian_base() {
  if has_image "$DEBIAN_BASE"; then
    say "$DEBIAN_BASE is there"
    return
  fi
  [[ $(id -u) == 0 ]] || die "debootstrap needs root"
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap (or '$0 install')"
  local root
  root=$(mktemp -d)
  # shellcheck disable=SC2064 # the directory's path is known now
  trap "rm -rf '$root'" EXIT
  say "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
  debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -c . | "$ENGINE" import - "$DEBIAN_BASE" >/dev/null
  say "imported $DEBIAN_BASE"
}

cmd_nfs_image() {
  local base=$DEBIAN_SLIM
  if ! pullable "$base"; then
    say "$base cannot be pulled: building from the local Debian base"
    cmd_debian_base
    base=$DEBIAN_BASE
  fi
  say "building $NFS_IMAGE from $base"
  local fmt=()
  # podman writes OCI images by default, which have no HEALTHCHECK.
  [[ $ENGINE == podman ]] && fmt=(--format docker)
  # Host network for apt-get inside the build: it needs no bridge or NAT.
  "$ENGINE" build --network host "${fmt[@]}" --build-arg "DEBIAN_IMAGE=$base" \
    -t "$NFS_IMAGE" "$repo/compose/nfs-ganesha"
}

# Debian 12's podman-compose (1.0.3) gives a `network_mode: host` service the
# project network as well, which podman refuses; 1.0.4 and later do not.
# `install` puts this release from PyPI in a virtualenv of its own.
PODMAN_COMPOSE_VERSION=1.6.0
PODMAN_COMPOSE_VENV=${NFS3P_CACHE:-${HOME:-/root}/.cache/nfs3-provisioner}/podman-compose-$PODMAN_COMPOSE_VERSION

compose_cmd() {
  if [[ $ENGINE == docker ]] && docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif [[ $ENGINE == podman ]] && podman compose version >/dev/null 2>&1; then
    echo "podman compose"
  elif [[ -x $PODMAN_COMPOSE_VENV/bin/podman-compose ]]; then
    echo "$PODMAN_COMPOSE_VENV/bin/podman-compose"
  elif command -v podman-compose >/dev/null &&
    ! podman-compose version 2>/dev/null | grep -q 'podman-compose version 1\.0\.[0-3]$'; then
    echo podman-compose
  elif command -v docker-compose >/dev/null; then
    echo docker-compose
  else
    die "no usable compose tool: the Docker compose plugin, podman 4.7+ (podman compose) or podman-compose 1.0.4+ ('$0 install' puts $PODMAN_COMPOSE_VERSION in $PODMAN_COMPOSE_VENV)"
  fi
}

# The compose command among ARGS (after -p NAME / -f FILE style options).
compose_subcommand() {
  while (($#)); do
    case $1 in
      -p | -f | --project-name | --file | --env-file | --profile) shift 2 ;;
      -*) shift ;;
      *) echo "$1"; return ;;
    esac
  done
}

cmd_compose() {
  local c kubeconfig=${KUBECONFIG:-${HOME:-/root}/.kube/config}
  # Compose tools create a missing bind-mount source as a directory, which
  # then stands where the kubeconfig should be written.
  case $(compose_subcommand "$@") in
    down | ps | logs | stop | kill | version | "") ;;
    *) [[ -f $kubeconfig ]] || die "no kubeconfig file at $kubeconfig (set KUBECONFIG to one file)" ;;
  esac
  c=$(compose_cmd)
  # word splitting of "docker compose" is intended
  # shellcheck disable=SC2086
  (cd "$repo" && exec $c -f "$repo/docker-compose.yml" "$@")
}

cmd_install() {
  local pkgs=(debootstrap musl-tools binutils ca-certificates) missing=() p target docker=false
  # A Docker daemon that answers is engine enough; otherwise podman, with runc
  # (see containers.conf) and podman-compose from PyPI (see compose_cmd).
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker=true
  else
    # catatonit: podman's init for compose's `init: true` (a recommends of
    # podman, which --no-install-recommends and some preinstalled podmans lack).
    pkgs+=(podman runc catatonit python3-venv)
  fi
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "needs root to apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists are refreshed only when the install fails: `apt-get update` is slow.
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
      { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
  fi
  if [[ $docker == false && ! -x $PODMAN_COMPOSE_VENV/bin/podman-compose ]] &&
    ! podman compose version >/dev/null 2>&1; then
    say "installing podman-compose $PODMAN_COMPOSE_VERSION (PyPI) in $PODMAN_COMPOSE_VENV"
    rm -rf "$PODMAN_COMPOSE_VENV"
    /usr/bin/python3 -m venv "$PODMAN_COMPOSE_VENV"
    "$PODMAN_COMPOSE_VENV/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >&2
  fi
  target=$(musl_target)
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
  fi
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  nfs-image) cmd_nfs_image ;;
  debian-base) cmd_debian_base ;;
  compose) shift; cmd_compose "$@" ;;
  compose-up)
    cmd_build "$IMAGE"
    cmd_nfs_image
    cmd_compose up -d
    ;;
  compose-down) shift; cmd_compose down "$@" ;;
  engine) echo "$ENGINE" ;;
  env)
    echo "export CONTAINER_ENGINE=$ENGINE"
    echo "export CONTAINERS_CONF=${CONTAINERS_CONF:-}"
    echo "export IMAGE=$IMAGE"
    echo "export NFS3P_NFS_IMAGE=$NFS_IMAGE"
    ;;
  install) cmd_install ;;
  *)
    sed -n '/^# Usage/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
