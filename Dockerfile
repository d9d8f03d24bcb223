# syntax=docker/dockerfile:1.7
#
# blend-scaler image: built with the Rust toolchain, shipped on distroless/cc
# (glibc + libgcc, no shell, no package manager) as the nonroot user.
#   docker build -t blend-scaler:dev .
# Pin the base images by digest in CI (e.g. with Renovate) for reproducible builds.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# aws-lc-sys (rustls' crypto provider for tonic) builds its C code with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# Registry and target caches survive between builds; the binary is copied out
# of the cache mount so the next stage can see it. Only `serve`'s features: no
# demo upstreams or simulator (scripts/check-serve-binary checks this line's build). The
# `dist` profile is release with whole-program LTO (Cargo.toml says why).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin blend-scaler --no-default-features --features otlp \
 && install -D -m 0755 target/dist/blend-scaler /out/blend-scaler \
 && strip /out/blend-scaler

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="blend-scaler" \
      org.opencontainers.image.description="KEDA external scaler blending Service Bus, Prometheus and cron signals" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/blend-scaler /usr/local/bin/blend-scaler
# 65532 is distroless's nonroot; the chart runs it with a read-only root filesystem.
USER 65532:65532
# gRPC (KEDA, grpc.health.v1) and HTTP (/metrics, /livez, /readyz).
EXPOSE 9090 9464
ENV BLEND_SCALER_GRPC_ADDR=0.0.0.0:9090 \
    BLEND_SCALER_HTTP_ADDR=0.0.0.0:9464 \
    BLEND_SCALER_LOG_FORMAT=json
# glibc's malloc: at most three arenas, and free memory past 128 KiB at the top of the heap
# handed back. By default every thread that allocates may get an arena of its own (up to 8
# per core), and what a burst frees stays in the arena it was freed to: with 10,000
# ScaledObjects, 78 MiB resident instead of 90. One arena held the same memory as three
# (54.8 against 55.5 MiB) but made both async workers queue on its lock (h2load, all
# signals, 16 x 50: 0.69 of the baseline against 0.90): BENCHMARKS.md, "Memory" and the
# h2load section; benches/memory.rs runs both builds with this line's value. A process
# started outside this image can set the same variable.
ENV GLIBC_TUNABLES=glibc.malloc.arena_max=3:glibc.malloc.trim_threshold=131072
ENTRYPOINT ["/usr/local/bin/blend-scaler"]
CMD ["serve"]
