#!/usr/bin/env bash
# The supply-chain rules of deny.toml: licences, banned and duplicate crates, sources, and the
# RustSec advisories. The advisory database is fetched from its git repository; where that is
# unreachable the advisories are reported as not checked (the other checks still gate).
# Usage: scripts/supply-chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deny="$(scripts/install-cargo-deny.sh)"
"$deny" --version
"$deny" check --hide-inclusion-graph licenses bans sources
echo
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if "$deny" check --hide-inclusion-graph advisories >"$log" 2>&1; then
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" "$log"; then
  echo "advisories NOT CHECKED: the RustSec advisory database could not be fetched from here:" >&2
  grep -m1 "failed to fetch" "$log" >&2
else
  cat "$log" >&2
  exit 1
fi
