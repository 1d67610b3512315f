#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, the dependency and supply-chain
# rules, unit, integration, doc and end-to-end tests (through a real Envoy 1.36.2, installed
# into .venv on first use; the shared-store tests against a real redis-server from Debian), then
# the Docker path (scripts/docker-e2e.sh: the builder image built, engines built in it, the
# runtime image run behind Envoy; needs root for its own Docker daemon; POLICY_ENGINE_SKIP_DOCKER=1
# skips it, saying so).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency rules: the SDK, definitions and core use no gRPC; the builder no engine"
scripts/check-deps.sh

step "supply chain: licences, duplicate versions, sources, advisories (deny.toml)"
scripts/supply-chain.sh

step "doc tests"
cargo test --workspace --locked --doc

step "Envoy 1.36.2 for the end-to-end tests"
ENVOY_BIN="$(scripts/install-envoy.sh)"
export ENVOY_BIN
"$ENVOY_BIN" --version

step "Envoy 1.40.0 for the module's second ABI"
ENVOY_BIN_1_40="$(scripts/install-envoy.sh 1.40.0)"
export ENVOY_BIN_1_40
"$ENVOY_BIN_1_40" --version

step "hadolint 2.15.1 for the Dockerfile tests"
HADOLINT_BIN="$(scripts/install-hadolint.sh)"
export HADOLINT_BIN
"$HADOLINT_BIN" --version

step "redis-server for the shared-store tests (each test starts its own)"
REDIS_SERVER_BIN="$(scripts/install-redis.sh)"
export REDIS_SERVER_BIN
"$REDIS_SERVER_BIN" --version

step "the development Envoy module for the end-to-end tests"
scripts/build-dev-module.sh

step "unit, integration and end-to-end tests (nextest when installed)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test"
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi

step "Docker: the builder image, engines built in it, the runtime image behind Envoy"
if [ "${POLICY_ENGINE_SKIP_DOCKER:-}" = 1 ]; then
  echo "SKIPPED: POLICY_ENGINE_SKIP_DOCKER=1 (the Docker path is not tested)"
else
  scripts/docker-e2e.sh
fi
