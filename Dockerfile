# syntax=docker/dockerfile:1
# chat-service image. Build: docker build -t chat-service . (BuildKit).
# See docs/deploy.md. No container engine runs on this project's dev and CI
# machines: this file is checked statically (scripts/check_deploy.sh), never built there.

# The toolchain CI builds and tests with, at least Cargo.toml's
# rust-version (scripts/check_deploy.sh checks the tag against it and
# against what Cargo.lock's dependencies declare).
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
# --locked, as every cargo command in CI (scripts/test.sh): the image builds
# exactly the lockfile CI tested.
# Cache mounts keep the crate registry and target/ between builds, so a source
# change recompiles only this crate. target/ is a mount that is not in the
# layer, so the binary is copied out within the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/chat-service /out/chat-service

FROM debian:bookworm-slim
# ca-certificates: the roots rustls reads for https Django, MongoDB TLS and
# PostgreSQL sslmode=verify-*. busybox: its wget runs the HEALTHCHECK; 818 KiB
# with no dependency beyond libc, where curl brings libcurl4 and a dozen
# libraries (LDAP, Kerberos, SSH, RTMP) the probe would never use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates busybox \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 chat \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chat \
 && mkdir /data \
 && chown 10001:10001 /data
COPY --from=builder /out/chat-service /usr/local/bin/chat-service

# A fixed uid/gid, so volume ownership and a Kubernetes securityContext
# (runAsUser/fsGroup 10001) can name it. /data is created owned by it before
# VOLUME, so a new named volume starts with that owner.
# CHAT_BIND: the service's default too, stated because a container must listen
# beyond loopback. PORT is set so the HEALTHCHECK follows an override of it.
ENV CHAT_DATA_DIR=/data \
    CHAT_BIND=0.0.0.0 \
    PORT=8080
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# SIGTERM starts the ordered drain (WebSockets closed with 1001, writer
# flushed); give the container 3 × CHAT_SHUTDOWN_TIMEOUT_S plus a margin
# (docker stop -t 40, compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only: /healthz answers while the process serves HTTP. Readiness
# (store usable) is /readyz, for orchestrators that route traffic by it.
# Through sh so that an override of PORT is followed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/bin/sh", "-c", "busybox wget -q -T 2 -O /dev/null \"http://127.0.0.1:${PORT}/healthz\" || exit 1"]
ENTRYPOINT ["/usr/local/bin/chat-service"]
