#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing (no service is started: the tests start
# their own instances on free loopback ports) and prints the binary's path.
# Usage: scripts/install-redis.sh
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "redis-server is missing and installing it needs root: apt-get install redis-server" >&2
    exit 1
  fi
  # Keep the package's init script from starting a system service during the install.
  guard=/usr/sbin/policy-rc.d
  made_guard=
  if [ ! -e "$guard" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$guard"
    chmod +x "$guard"
    made_guard=1
  fi
  trap '[ -n "$made_guard" ] && rm -f "$guard"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends redis-server >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends redis-server >&2
  fi
fi
command -v redis-server
