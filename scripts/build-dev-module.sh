#!/usr/bin/env bash
# Builds the development Envoy module (tests/dev-module: the sample and end-to-end test policies)
# for each Envoy ABI and puts each build where the end-to-end tests look for it:
# <target>/debug/modules/envoy-<version>/libpolicy_dev_module.so. Usage: scripts/build-dev-module.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
for abi in 1.36 1.40; do
  feature="envoy-${abi/./-}"
  cargo build --locked -p policy-dev-module --no-default-features --features "$feature"
  mkdir -p "$target/debug/modules/envoy-$abi"
  cp "$target/debug/libpolicy_dev_module.so" "$target/debug/modules/envoy-$abi/libpolicy_dev_module.so.new"
  mv "$target/debug/modules/envoy-$abi/libpolicy_dev_module.so.new" "$target/debug/modules/envoy-$abi/libpolicy_dev_module.so"
  echo "dev module for Envoy $abi: $target/debug/modules/envoy-$abi/libpolicy_dev_module.so"
done
