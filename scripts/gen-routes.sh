#!/usr/bin/env bash
# Prints a route configuration with ROUTES generated routes (3 policies each, one with a CEL
# condition) besides the route `public`, which sets `x-config: GENERATION` on requests. Every
# generated parameter carries GENERATION too, so two generations differ in every entry: a
# reload between them rebuilds every policy instance (the worst case).
# Usage: scripts/gen-routes.sh ROUTES [GENERATION]
set -euo pipefail
routes="${1:?usage: gen-routes.sh ROUTES [GENERATION]}"
generation="${2:-1}"
printf 'version: v1\nroutes:\n'
printf '  - route: public\n    policies:\n      - {name: set-header, version: 1.0.0, params: {request: {set: {x-config: "%s"}}}}\n' "$generation"
for ((i = 0; i < routes; i++)); do
  printf '  - route: gen-%05d\n    policies:\n' "$i"
  printf '      - {name: set-header, version: 1.0.0, params: {request: {set: {x-route: "gen-%05d", x-config: "%s"}}}}\n' "$i" "$generation"
  printf '      - {name: rate-limit, version: 1.0.0, condition: '"'"'request.method == "POST"'"'"', params: {requestsPerSecond: %d, burst: 200, key: {header: x-tenant}}}\n' "$((100 + generation))"
  printf '      - {name: cors, version: 1.0.0, params: {allowOrigins: ["https://app%s.example.com"]}}\n' "$generation"
done
