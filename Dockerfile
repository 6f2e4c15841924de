# syntax=docker/dockerfile:1
# One image per service:  docker build --build-arg SERVICE=user -t mercato/user-service .
# SERVICE is a directory under services/ (today: user; order and payment join
# as they land). The result is a static musl binary on distroless/static,
# running as a numeric non-root user, needing no writable root filesystem.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl \
 && cargo install cargo-chef --locked
WORKDIR /src

# The dependency graph only, so the dependency layer is rebuilt only when a
# manifest or the lock file changes, not on every source edit.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ARG SERVICE=user
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --target x86_64-unknown-linux-musl \
      --recipe-path recipe.json -p mercato-${SERVICE}
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p mercato-${SERVICE} --bin ${SERVICE}-service \
 && cp target/x86_64-unknown-linux-musl/release/${SERVICE}-service /service

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /service /service
USER 65532:65532
EXPOSE 9090 8080 8081
ENTRYPOINT ["/service"]
