# nfs3-provisioner: build, test, demo and deploy.
#
#   make help     list the targets
#   make demo     local NFS server + control plane + provisioner + examples
#   make test     what CI runs (.ci/run): lint, then every test against real
#                 NFS and a real control plane
#
# Recipes run in bash with -euo pipefail, one shell per recipe.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Go may be installed without being on PATH (CI images keep it in
# /usr/local/go/bin); cargo likewise in ~/.cargo/bin.
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/.cargo/bin

CARGO ?= cargo
KUBECTL ?= kubectl
IMAGE ?= nfs3-provisioner:dev
# Upper bound for `cargo test` (seconds); the control plane is started before.
TEST_TIMEOUT ?= 3600
# Which targets `make test` tests, and extra arguments for the test
# binaries, e.g. TEST_TARGETS="--test e2e" TEST_ARGS="--nocapture"
TEST_TARGETS ?= --all-targets
TEST_ARGS ?=
E2E := tests/e2e
SCRIPTS := $(sort $(wildcard tests/e2e/*.sh deploy/*.sh compose/*/*.sh image/*.sh bench/*.sh)) .ci/run

.PHONY: help build test lint toolchain demo demo-down e2e bench image deploy \
	check-deploy compose-up compose-down test-image cluster-up cluster-down nfs-up \
	nfs-down clean purge

help: ## list the targets
	@echo "usage: make TARGET"
	echo
	grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) |
	  awk -F ':.*## ' '{ printf "  %-14s %s\n", $$1, $$2 }'

build: ## cargo build --release (target/release/nfs3-provisioner)
	@$(CARGO) build --release

toolchain: ## add what `make test` needs and may be missing: rustfmt, clippy, a C compiler, shellcheck
	@if ! $(CARGO) fmt --version >/dev/null 2>&1 || ! $(CARGO) clippy --version >/dev/null 2>&1; then
	  echo "make: adding the rustfmt and clippy components"
	  rustup component add rustfmt clippy
	fi
	# ring (TLS) compiles C; rustup does not bring a compiler with it.
	if ! command -v cc >/dev/null; then
	  [[ $$(id -u) == 0 ]] || { echo "make: no C compiler (cc); install gcc" >&2; exit 1; }
	  echo "make: installing gcc"
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get install -y -q --no-install-recommends gcc libc6-dev ||
	    { apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev; }
	fi
	# shellcheck for `make lint`; without root it is skipped there, not an error.
	if ! command -v shellcheck >/dev/null && [[ $$(id -u) == 0 ]]; then
	  echo "make: installing shellcheck"
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get install -y -q --no-install-recommends shellcheck ||
	    { apt-get update -q && apt-get install -y -q --no-install-recommends shellcheck; } ||
	    echo "make: could not install shellcheck; make lint will skip it" >&2
	fi

lint: toolchain ## cargo fmt --check, clippy -D warnings, bash -n and shellcheck on the scripts
	@echo "==> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	echo "==> cargo clippy --all-targets -- -D warnings"
	$(CARGO) clippy --all-targets -- -D warnings
	echo "==> bash -n"
	for f in $(SCRIPTS); do bash -n "$$f"; done
	if command -v shellcheck >/dev/null; then
	  echo "==> shellcheck"
	  shellcheck -x $(SCRIPTS)
	else
	  echo "==> shellcheck: not installed, skipped"
	fi

# Phases run one after the other with their time printed; the NFS server and
# the control plane are started before `cargo test` so their first start
# (Debian packages, a ~10 minute build of Kubernetes from source) is visible
# and outside any test's time limit. The tests start them too (idempotent).
test: ## lint, start NFS + control plane, then cargo test --all-targets (what CI runs)
	@started=$$(date +%s)
	summary=()
	phase() {
	  local name=$$1 t0=$$(date +%s) rc=0
	  shift
	  echo "==> [$$name] $$*"
	  "$$@" || rc=$$?
	  summary+=("$$(printf '%-12s %5ss' "$$name" $$(( $$(date +%s) - t0 )))$$( ((rc == 0)) || echo "  FAILED (exit $$rc)")")
	  echo "==> [$$name] $$( ((rc == 0)) && echo done || echo "FAILED (exit $$rc)") after $$(( $$(date +%s) - t0 ))s"
	  if ((rc != 0)); then report; exit "$$rc"; fi
	}
	report() {
	  echo "==> phase times"
	  printf '    %s\n' "$${summary[@]}"
	  echo "    total        $$(( $$(date +%s) - started ))s"
	}
	phase toolchain $(MAKE) toolchain
	phase lint $(MAKE) lint
	phase nfs-up $(E2E)/nfs.sh up
	phase cluster-up $(E2E)/cluster.sh up
	phase cargo-test timeout --kill-after=60 $(TEST_TIMEOUT) $(CARGO) test $(TEST_TARGETS) -- $(TEST_ARGS)
	report

e2e: ## only the end-to-end tests: cargo test --test e2e (starts the cluster first)
	@$(E2E)/cluster.sh up
	timeout --kill-after=60 $(TEST_TIMEOUT) $(CARGO) test --test e2e -- $(TEST_ARGS)

bench: ## provisioning benchmark against the real incumbent (benches/README.md; long)
	@# The incumbent is built once from ../shared/incumbent (INCUMBENT_SRC) and cached,
	# unless INCUMBENT_BIN names a binary; building it first keeps its 2.5 min in plain sight.
	if [[ -z $${INCUMBENT_BIN:-} ]]; then bench/incumbent.sh path >/dev/null; fi
	exec $(CARGO) bench --bench provision
	echo "  exists in this checkout" >&2
	exit 2

demo: ## try it: local NFS + control plane + provisioner + storageclass-examples
	@$(E2E)/demo.sh up

demo-down: ## stop what `make demo` started: provisioner, control plane, NFS server
	@$(E2E)/demo.sh down

image: ## the provisioner image $(IMAGE), with Docker or podman; offline: static binary built here, FROM scratch
	@IMAGE=$(IMAGE) image/image.sh build

deploy: ## kubectl apply -k deploy/base (to the cluster of your kubeconfig)
	@command -v $(KUBECTL) >/dev/null || { echo "make deploy: $(KUBECTL) not found (set KUBECTL=...)" >&2; exit 1; }
	$(KUBECTL) apply -k deploy/base

check-deploy: ## offline checks of deploy/: YAML parses, kustomize renders, helm lint
	@deploy/check.sh

compose-up: ## NFS server + provisioner with docker compose, podman compose or podman-compose (builds the images)
	@IMAGE=$(IMAGE) image/image.sh compose-up

compose-down: ## stop and remove the compose containers (keeps the exported data; ARGS=-v drops it)
	@image/image.sh compose-down $(ARGS)

# Separate from `make test`: it needs root and installs podman, debootstrap and
# the musl toolchain, then builds both images (cold: see README). It uses the
# NFS server and control plane `make test` starts.
test-image: ## as root: build the images with podman/Docker, run them against NFS + control plane (tests/container.rs)
	@started=$$(date +%s)
	step() {
	  local t0=$$(date +%s)
	  echo "==> [$$1] $${*:2}"
	  "$${@:2}"
	  echo "==> [$$1] done after $$(( $$(date +%s) - t0 ))s"
	}
	step install image/image.sh install
	step nfs-up $(E2E)/nfs.sh up
	step cluster-up $(E2E)/cluster.sh up
	# The tests check the offline image's exact contents, whatever registry is reachable.
	step image env IMAGE=$(IMAGE) IMAGE_BUILD=host image/image.sh build
	step nfs-image image/image.sh nfs-image
	step container-test timeout --kill-after=60 1800 $(CARGO) test --test container -- --include-ignored $(TEST_ARGS)
	echo "==> test-image: $$(( $$(date +%s) - started ))s in all"

cluster-up: ## start the local control plane (and NFS server); first run builds it (~10 min)
	@$(E2E)/cluster.sh up

cluster-down: ## stop the local control plane and the NFS server; keeps their data
	@$(E2E)/cluster.sh down

nfs-up: ## start the local NFS server (nfs-ganesha) exporting export1 and export2
	@$(E2E)/nfs.sh up

nfs-down: ## stop the local NFS server; keeps the exported data
	@$(E2E)/nfs.sh down

clean: ## cargo clean
	@$(CARGO) clean

purge: ## demo-down, then delete the local state (/tmp/nfs3p-e2e); the built binaries stay cached
	@$(E2E)/demo.sh down
	$(E2E)/cluster.sh down --purge
