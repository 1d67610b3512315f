#!/usr/bin/env bash
# Fuzzes the route configuration, the ext_proc message handling, the builder's manifest and
# policy definitions with libFuzzer (cargo-fuzz on the nightly toolchain), each for a bounded
# time. Not part of the test command: the normal tests replay what fuzzing found
# (fuzz/regressions/<target>/, through tests/fuzz-harness).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, every target)
# A crash leaves its input in fuzz/artifacts/<target>/; fix the bug, then copy the input into
# fuzz/regressions/<target>/ so the tests keep replaying it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(route_config ext_proc_stream manifest definition)

rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked --version 0.13.2
fi
# The seeds of the stream target are protobuf: written by the harness, not by hand.
cargo run -q --locked -p policy-fuzz-harness --example write-seeds -- fuzz/regressions/ext_proc_stream

cd fuzz
status=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "==> $target for ${seconds}s"
  # Sanitizer builds keep their own target dir (fuzz/target), whatever CARGO_TARGET_DIR says.
  # -rss_limit_mb bounds memory; -timeout flags inputs that hang a single run.
  if ! env -u CARGO_TARGET_DIR cargo +nightly fuzz run "$target" "corpus/$target" "regressions/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1; then
    echo "fuzz.sh: $target found a failing input in fuzz/artifacts/$target/" >&2
    status=1
  fi
done
exit $status
