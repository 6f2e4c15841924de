# syntax=docker/dockerfile:1
# One image per service, for linux/amd64 and linux/arm64:
#   docker build --build-arg SERVICE=order -t mercato/order-service:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg SERVICE=order …
# Each platform builds natively for itself (under QEMU for a foreign one:
# slower, but no cross toolchain for musl and the C dependencies).
# SERVICE is user, order or payment — or rollout, the rollout controller
# (crates/rollout: `-t mercato/rollout-controller:dev`, run with `run`).
# The result is a static, stripped musl
# binary on distroless/static (about 2 MB of base), running as the numeric
# non-root user 65532 and writing nothing: it runs with a read-only root
# filesystem (config is mounted at /etc/config, keys at /etc/mercato/keys).
# Its allocator is mimalloc (the binaries' default `mimalloc` feature, built
# with musl-gcc here), not musl's own, which is slow under threads.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
# Set by buildx (and by docker build, for the machine's own platform).
ARG TARGETARCH
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH '${TARGETARCH}'" >&2; exit 1 ;; \
    esac > /rust-target \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)" \
 && cargo install cargo-chef --locked
# musl-gcc for the C parts (mimalloc, aws-lc) on both architectures.
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=musl-gcc
WORKDIR /src

# The dependency graph only, so the dependency layer is rebuilt only when a
# manifest or the lock file changes, not on every source edit.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ARG SERVICE=user
# The package and binary of SERVICE.
RUN case "${SERVICE}" in \
      user|order|payment) echo "mercato-${SERVICE} ${SERVICE}-service" ;; \
      rollout) echo "mercato-rollout mercato-rollout" ;; \
      *) echo "SERVICE must be user, order, payment or rollout, not '${SERVICE}'" >&2; exit 1 ;; \
    esac > /what
# Small images: no symbols in the shipped binary.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --target "$(cat /rust-target)" \
      --recipe-path recipe.json -p "$(cut -d' ' -f1 /what)"
COPY . .
RUN cargo build --release --locked --target "$(cat /rust-target)" \
      -p "$(cut -d' ' -f1 /what)" --bin "$(cut -d' ' -f2 /what)" \
 && cp "target/$(cat /rust-target)/release/$(cut -d' ' -f2 /what)" /service

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /service /service
USER 65532:65532
EXPOSE 9090 8080 8081
ENTRYPOINT ["/service"]
