# The policy builder image: the Rust toolchain, the engine's source, every crate vendored, and
# the engine and sample policies pre-compiled, so a build inside it needs no network and
# compiles only the registry crate and the user's own policies.
#   docker build -f Dockerfile.builder -t policy-builder .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/workspace" policy-builder \
#     --manifest policy-manifest.yaml
# (--user: what it writes to the workspace belongs to you; any uid works.) The first stage's RUN
# step is scripts/prepare-builder.sh, which the tests run natively; scripts/docker-e2e.sh
# builds and runs the image itself.

# Stage 1: vendor (the only step with network), compile the builder and warm the cache.
FROM rust:1.88-slim-bookworm AS prepare
WORKDIR /opt/policy-engine
COPY . .
# The image runs as 10001 by default, or as whoever `docker run --user` names: the warm target
# directory and the offline CARGO_HOME (cargo locks files there) are writable by any user (set
# here, so the final stage does not copy the target directory again to change its owner).
RUN scripts/prepare-builder.sh /opt/policy-builder vendor builder warm \
    && rm -rf /opt/policy-builder/builder-target \
    && chmod -R a+rwX /opt/policy-builder/target /opt/policy-builder/cargo-home

# Stage 2: the toolchain, the source, the vendored crates, the warm target directory.
FROM rust:1.88-slim-bookworm
LABEL org.opencontainers.image.title="policy-builder" \
      org.opencontainers.image.description="Builds policy-engine binaries for Envoy ext_proc from a policy manifest, offline" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="policy-engine"
COPY --from=prepare /opt/policy-engine /opt/policy-engine
COPY --from=prepare /opt/policy-builder /opt/policy-builder
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin builder \
    && mkdir -p /workspace/output \
    && chown 10001:10001 /workspace /workspace/output
ENV PATH="/opt/policy-builder/bin:${PATH}" \
    CARGO_HOME=/opt/policy-builder/cargo-home \
    CARGO_NET_OFFLINE=true \
    POLICY_ENGINE_SOURCE=/opt/policy-engine \
    POLICY_BUILDER_VENDOR_DIR=/opt/policy-builder/vendor \
    POLICY_BUILDER_TARGET_DIR=/opt/policy-builder/target \
    POLICY_BUILDER_OUT=/workspace/output \
    POLICY_BUILDER_PIN_FEATURES=true
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["policy-builder"]
CMD ["--help"]
