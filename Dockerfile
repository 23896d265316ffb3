# syntax=docker/dockerfile:1
#
# stickyd image: a glibc binary with jemalloc on distroless/cc, run as
# 65532:65532, for linux/amd64 and linux/arm64. The binary is the one the
# benchmarks measure (x86_64-unknown-linux-gnu, jemalloc; BENCHMARKS.md,
# "Memory under load").
#
#   docker build -t stickyd:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t registry.example.com/stickyd:0.1.0 --push .
#
# The build stage runs on the builder's own platform ($BUILDPLATFORM) and
# cross-compiles for the image's ($TARGETARCH), so an arm64 image builds at
# native speed on an amd64 machine and the other way round: no emulation.
#
# The final image has no shell and no package manager: only /stickyd, glibc and
# libgcc (distroless/cc), CA certificates, /etc/passwd entries for nonroot,
# and tzdata. rust:1.95-bookworm and distroless/cc-debian12 have the same
# glibc (Debian 12's 2.36), so the binary links against the library it runs
# with.

# ---- build -----------------------------------------------------------------
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build

ARG BUILDARCH
ARG TARGETARCH

# The Rust target for the image's architecture, and a C compiler for it:
# ring (rustls) builds C and assembly, and jemalloc is C. For the builder's own
# architecture that is the image's gcc; for the other one, Debian's cross gcc
# and its glibc, which also links the binary.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "${TARGETARCH}" in \
      amd64) arch=x86_64 ;; \
      arm64) arch=aarch64 ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}: amd64 or arm64" >&2; exit 1 ;; \
    esac \
 && target="${arch}-unknown-linux-gnu" \
 && linker="" \
 && if [ "${TARGETARCH}" = "${BUILDARCH}" ]; then \
      cc=gcc; \
    elif [ "${TARGETARCH}" = arm64 ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu=4:12.2.0-3 libc6-dev-arm64-cross=2.36-8cross1; \
      cc=aarch64-linux-gnu-gcc; \
      linker="${cc}"; \
    else \
      apt-get update; \
      apt-get install -y --no-install-recommends gcc-x86-64-linux-gnu=4:12.2.0-3 libc6-dev-amd64-cross=2.36-8cross1; \
      cc=x86_64-linux-gnu-gcc; \
      linker="${cc}"; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${target}" \
 && echo "${target}" > /rust-target \
 && { echo "export CC_${target//-/_}=${cc}"; \
      if [ -n "${linker}" ]; then echo "export CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"${target}")_LINKER=${linker}"; fi; \
    } > /cross.env

WORKDIR /src
COPY . .

# Cache mounts keep the crate registry and the target directory between builds
# (BuildKit); the binary is copied out of the cached target directory. One
# cache per architecture, so that parallel platform builds do not share one.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=stickyd-target-${TARGETARCH} \
    source /cross.env \
 && target="$(cat /rust-target)" \
 && cargo build --release --locked --target "${target}" --bin stickyd \
 && cp "target/${target}/release/stickyd" /stickyd

# ---- run -------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build --chown=65532:65532 /stickyd /stickyd

# Numeric, so that runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532

# 8080: the sidecar's proxy port (STICKYD_LISTEN); 9090: admin (/healthz,
# /readyz, /metrics, /endpoints; STICKYD_ADMIN_LISTEN). The injector
# (stickyd injector) listens on 8443.
EXPOSE 8080 9090

ENTRYPOINT ["/stickyd"]
CMD ["run"]
