# syntax=docker/dockerfile:1
#
# stickyd image: a static musl binary on distroless/static, run as 65532:65532.
#
#   docker build -t stickyd:0.1.0 .
#
# The final image has no shell and no package manager: only /stickyd, CA
# certificates, /etc/passwd entries for nonroot, and tzdata.

# ---- build -----------------------------------------------------------------
FROM rust:1.95-bookworm AS build

# musl-gcc builds the C and assembly parts of ring (rustls) for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# Cache mounts keep the crate registry and the target directory between builds
# (BuildKit); the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin stickyd \
 && cp target/x86_64-unknown-linux-musl/release/stickyd /stickyd

# ---- run -------------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

COPY --from=build --chown=65532:65532 /stickyd /stickyd

# Numeric, so that runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532

# 8080: the sidecar's proxy port (STICKYD_LISTEN); 9090: admin (/healthz,
# /readyz, /metrics, /endpoints; STICKYD_ADMIN_LISTEN).
EXPOSE 8080 9090

ENTRYPOINT ["/stickyd"]
CMD ["run"]
