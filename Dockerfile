# The agent image: the `tern` binary built with the agent feature alone
# (stripped by the release profile), on a minimal glibc runtime, running as
# uid 65532 with a health check. See README, "Agent image".
#
# Two ways to get the binary, one Dockerfile:
#
# * From source (the default target, `agent`): a Rust image compiles it.
#       docker build -t tern-agent:latest .
#   Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1
#   before), which builds only the stages the target needs. The legacy
#   builder runs every stage before the target, the `agent-prebuilt` ones
#   too, and those need a binary in the context.
#
# * From the build context (target `agent-prebuilt`): a binary built on the
#   host with `cargo build --release --no-default-features --features agent
#   --bin tern`, so CI compiles nothing twice and needs no Rust image. Works
#   with the legacy builder as well (it stops at the target):
#       docker build --target agent-prebuilt -t tern-agent:latest .
#   `scripts/agent-image.sh` does this with a local runtime base made by
#   `docker import` (no registry needed) and a context holding the binary
#   alone (--build-arg AGENT_BINARY=tern).
#
# The runtime base must provide glibc (libc, libm), libgcc_s and the dynamic
# loader for the binary (`ldd` lists them), /etc/passwd and /tmp.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# The binary's path in the build context, for `agent-prebuilt`.
ARG AGENT_BINARY=target/release/tern

# ----- what both final images share: user, entry point, health check -----
FROM ${RUNTIME_IMAGE} AS runtime
# Not root: the engine socket is reached through its group, which the
# generated command adds (`--group-add "$(stat -c %g /var/run/docker.sock)"`).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tern"]
CMD ["agent"]
# Healthy while the last successful poll is within 3 x the ping interval
# + 60 s (and for that long after a start); see `tern agent health`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/tern", "agent", "health"]
LABEL org.opencontainers.image.title="tern-agent" \
      org.opencontainers.image.description="tern's edge agent for Docker hosts on metered links" \
      org.opencontainers.image.licenses="Apache-2.0"

# ----- the binary from the build context -----
FROM scratch AS binary-context
ARG AGENT_BINARY
# An empty directory, to become /data (the data volume's mount point; a
# new named volume takes its owner from it).
WORKDIR /data
COPY ${AGENT_BINARY} /tern

FROM runtime AS agent-prebuilt
COPY --from=binary-context /tern /usr/local/bin/tern
COPY --from=binary-context --chown=65532:65532 /data /data

# ----- the server image (`scripts/agent-image.sh --server`) -----
# The server role alone (`--no-default-features --features server`), its
# data directory a volume at /data (certificate, key, server key, SQLite
# database unless TERN_DATABASE_URL names PostgreSQL), listening on 9443.
# Replicas on one PostgreSQL share the same certificate, key and server
# key (mount them, or TERN_TLS_CERT/TERN_TLS_KEY and TERN_SECRET_KEY).
FROM ${RUNTIME_IMAGE} AS server-runtime
USER 65532:65532
ENV TERN_DATA=/data TERN_LISTEN=0.0.0.0:9443
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/tern"]
CMD ["server"]
LABEL org.opencontainers.image.title="tern-server" \
      org.opencontainers.image.description="tern's control server for fleets of Docker hosts on metered links" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM server-runtime AS server-prebuilt
COPY --from=binary-context /tern /usr/local/bin/tern
COPY --from=binary-context --chown=65532:65532 /data /data

# ----- the binary from source -----
FROM ${RUST_IMAGE} AS binary-source
WORKDIR /src
COPY . .
# The release profile strips symbols (Cargo.toml).
RUN cargo build --release --locked --no-default-features --features agent --bin tern \
    && mkdir -p /out/data \
    && cp target/release/tern /out/tern

FROM runtime AS agent
COPY --from=binary-source /out/tern /usr/local/bin/tern
COPY --from=binary-source --chown=65532:65532 /out/data /data
