#!/usr/bin/env bash
# The SDK is the contract policy authors depend on: it must not pull in gRPC or an async runtime.
# Fails when `cargo tree -p policy-sdk` shows tonic, prost, tokio or envoy-types.
set -euo pipefail
cd "$(dirname "$0")/.."
banned='^(tonic|prost|prost-types|tokio|envoy-types|hyper|h2) '
found=$(cargo tree -p policy-sdk --edges normal --prefix none --locked | sort -u | grep -E "$banned" || true)
if [ -n "$found" ]; then
  echo "policy-sdk depends on crates it must not use:" >&2
  echo "$found" >&2
  exit 1
fi
echo "policy-sdk: no gRPC or async-runtime dependencies"
