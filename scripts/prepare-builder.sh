#!/usr/bin/env bash
# Prepares the builder's offline layout under PREFIX: what Dockerfile.builder runs, and what
# the tests run natively (builder/tests/offline.rs). Usage:
#   scripts/prepare-builder.sh PREFIX [vendor] [builder] [warm]      (no step: all three)
# vendor   PREFIX/vendor: every crate of the workspace's Cargo.lock (cargo vendor; the only step
#          that needs the registry), and PREFIX/cargo-home/config.toml pointing cargo at it,
#          offline. With CARGO_HOME=PREFIX/cargo-home no registry is ever asked.
# builder  PREFIX/bin/policy-builder, compiled offline from the vendored crates.
# warm     PREFIX/target: the engine and the sample policies compiled (release) by building the
#          sample manifest offline, so later builds compile only the registry crate and the
#          user's own policies. POLICY_BUILDER_BIN overrides the builder used.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 PREFIX [vendor] [builder] [warm]" >&2; exit 2; }
mkdir -p "$1"
prefix="$(cd "$1" && pwd)"
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(vendor builder warm)
offline_home="$prefix/cargo-home"

for step in "${steps[@]}"; do
  case "$step" in
    vendor)
      # The user's CARGO_HOME (with its registry cache) fetches; the offline one never does.
      cargo vendor --locked --versioned-dirs --quiet \
        --manifest-path "$src/Cargo.toml" "$prefix/vendor" >/dev/null
      mkdir -p "$offline_home"
      cat >"$offline_home/config.toml" <<TOML
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "$prefix/vendor"

[net]
offline = true
TOML
      ;;
    builder)
      CARGO_HOME="$offline_home" cargo build --release --locked --offline --quiet \
        --manifest-path "$src/Cargo.toml" -p policy-builder \
        --target-dir "$prefix/builder-target"
      install -D -m 0755 "$prefix/builder-target/release/policy-builder" "$prefix/bin/policy-builder"
      ;;
    warm)
      CARGO_HOME="$offline_home" CARGO_NET_OFFLINE=true \
        "${POLICY_BUILDER_BIN:-$prefix/bin/policy-builder}" build \
        --manifest "$src/policy-manifest.yaml" --engine-source "$src" \
        --vendor-dir "$prefix/vendor" --target-dir "$prefix/target" --out "$prefix/warm" \
        --pin-features
      rm -rf "$prefix/warm"
      ;;
    *)
      echo "unknown step $step (vendor, builder, warm)" >&2
      exit 2
      ;;
  esac
done
