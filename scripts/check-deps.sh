#!/usr/bin/env bash
# Dependency rules, checked with `cargo tree` (normal edges):
# - policy-sdk is the contract policy authors depend on, and policy-definition is what the builder
#   reads policy crates with: neither pulls in gRPC, HTTP or an async runtime;
# - the policy core (policy-core) has no gRPC or HTTP stack: hosts add those; the Envoy module
#   host (policy-envoy-module) needs none either;
# - policy-builder checks and generates crates: it does not compile the engine's CEL, executor or
#   async runtime;
# - policy-control-plane serves the xDS resource type: it does not compile the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() { # PACKAGE BANNED_REGEX WHAT [CARGO_TREE_ARGS...]
  local found
  found=$(cargo tree -p "$1" "${@:4}" --edges normal --prefix none --locked | sort -u | grep -E "$2" || true)
  if [ -n "$found" ]; then
    echo "$1 depends on crates it must not use ($3):" >&2
    echo "$found" >&2
    status=1
  else
    echo "$1: $3"
  fi
}
network='^(tonic|prost|prost-types|tokio|envoy-types|hyper|h2|axum|tower) '
check policy-sdk "$network" "no gRPC, HTTP or async-runtime dependencies"
check policy-definition "$network" "no gRPC, HTTP or async-runtime dependencies"
check policy-core '^(tonic|prost|prost-types|envoy-types|hyper|h2|axum|tower) ' "no gRPC or HTTP"
check policy-envoy-module '^(tonic|prost|prost-types|envoy-types|hyper|h2|axum|tower) ' "no gRPC or HTTP: it runs inside Envoy"
check policy-builder '^(cel|tokio|tonic|prost|envoy-types|axum|policy-core|policy-ext-proc) ' "no CEL, engine or async runtime"
check policy-control-plane '^(policy-core|policy-ext-proc|cel|jsonschema) ' "the xDS resource type, not the engine"
exit "$status"
