# syntax=docker/dockerfile:1
#
# nfs3-provisioner container image.
#
#   docker build -t registry.example.com/nfs3-provisioner:0.1.0 .
#   podman build --layers -t registry.example.com/nfs3-provisioner:0.1.0 .
#
# Both base images come from registries. Where none can be reached, `make
# image` builds the same static binary on the host and assembles the same
# final stage FROM scratch instead (image/Containerfile.prebuilt).
#
# Stage 1 builds a static musl binary; stage 2 is distroless "static" (no
# shell, no libc), running as uid 65532. The crate uses rustls with ring, so
# no OpenSSL is needed; ring's C/assembly parts are compiled with musl-gcc.
# The target follows the build machine (x86_64 or aarch64), so
# `docker buildx build --platform linux/amd64,linux/arm64` builds each
# architecture natively (or under emulation).

# Fully qualified: podman resolves no short names without a registries.conf
# that lists a search registry.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && echo "$target" > /rust-target
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and build artefacts between
# builds; the binary is copied out of them to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(cat /rust-target)"; \
    export "CC_$(echo "$target" | tr - _)=musl-gcc"; \
    export CARGO_PROFILE_RELEASE_STRIP=symbols; \
    cargo build --release --locked --target "$target" --bin nfs3-provisioner; \
    mkdir -p /out; \
    cp "target/$target/release/nfs3-provisioner" /out/nfs3-provisioner; \
    if readelf -l /out/nfs3-provisioner | grep -q 'program interpreter'; then \
      echo "nfs3-provisioner is not statically linked" >&2; exit 1; \
    fi; \
    /out/nfs3-provisioner --help > /dev/null

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="nfs3-provisioner" \
      org.opencontainers.image.description="Kubernetes dynamic NFS provisioner speaking NFSv3 from user space" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/nfs3-provisioner /nfs3-provisioner
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/nfs3-provisioner"]
CMD ["run"]
