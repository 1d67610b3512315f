#!/usr/bin/env bash
# The Docker path as a user meets it, built and run for real: builds Dockerfile.builder; runs the
# README's example in it (this checkout as the workspace, as a non-root uid, no network) and a
# user's own workspace outside the repository; builds the runtime image from the Dockerfile the
# builder wrote; runs it behind the real Envoy and checks an allowed and a denied request, its
# HEALTHCHECK turning healthy, its non-root user and its build-info. Exits non-zero on the first
# failed check, saying which.
#
# It runs a Docker daemon of its own (never a system one): data under $POLICY_DOCKER_STATE
# (default ~/.cache/policy-engine/docker, so a later run reuses layers), its own socket, no
# iptables or bridge; stopped by its pid at the end. No image registry is needed: the base images
# the Dockerfiles name are made locally when absent, from Debian packages (debootstrap) and this
# machine's Rust toolchain, and carry this machine's CA bundle (the package registries may sit
# behind a TLS proxy only the host trusts). Installs docker.io and debootstrap when missing.
# Needs root. Envoy: $ENVOY_BIN, else scripts/install-envoy.sh.
# Usage: scripts/docker-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
state="${POLICY_DOCKER_STATE:-$HOME/.cache/policy-engine/docker}"

step() { printf '\n--> %s\n' "$*"; }
fail() {
  echo "docker-e2e: FAILED: $*" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || fail "needs root to run a Docker daemon of its own (the README says how to skip this test)"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
docker=/usr/bin/docker # the client Debian ships with its daemon
envoy="${ENVOY_BIN:-$(scripts/install-envoy.sh)}"

mkdir -p "$state"
work="$(mktemp -d)"
pids=()
containers=()
daemon_pid=""
run_started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cleanup() {
  for c in "${containers[@]}"; do "$docker" rm -f "$c" >/dev/null 2>&1 || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$daemon_pid" ]; then
    # Earlier runs' untagged layers go; this run's stay, for the next run to reuse.
    "$docker" image prune -f --filter "until=$run_started" >/dev/null 2>&1 || true
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true # dockerd stops its containerd, then exits
    # It can leave its network namespace mounted under the state directory: unmount that too.
    awk -v s="$state/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r |
      while read -r mount; do umount "$mount" 2>/dev/null || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- the daemon -----------------------------------------------------------------------------
export DOCKER_HOST="unix://$state/docker.sock"
stale="$(cat "$state/dockerd.pid" 2>/dev/null || true)"
if [ -n "$stale" ] && [ "$(cat "/proc/$stale/comm" 2>/dev/null)" = dockerd ]; then
  # Left by an interrupted run of this script (the pid file is its own): stop it first.
  kill "$stale"
  while [ -e "/proc/$stale" ]; do sleep 0.2; done
fi
start_daemon() { # STORAGE_DRIVER
  dockerd --data-root "$state/data-$1" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver "$1" --iptables=false --ip-masq=false --bridge=none \
    >"$state/dockerd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 1 300); do
    "$docker" version >/dev/null 2>&1 && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
  return 1
}
step "a Docker daemon of its own ($state)"
start_daemon overlay2 || start_daemon vfs || { cat "$state/dockerd.log" >&2; fail "dockerd did not start"; }
"$docker" info --format 'Docker {{.ServerVersion}}, storage driver {{.Driver}}'

# --- base images (stand-ins for what no registry can supply here) ---------------------------
rootfs() { # NAME [PACKAGES]: a Debian bookworm minbase root filesystem as a tar, made once
  local tar="$state/$1.tar"
  if [ ! -f "$tar" ]; then
    local dir="$work/rootfs-$1"
    debootstrap --variant=minbase ${2:+--include="$2"} bookworm "$dir" http://deb.debian.org/debian \
      >"$work/debootstrap-$1.log" 2>&1 || { tail -20 "$work/debootstrap-$1.log" >&2; fail "debootstrap $1"; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    # The host's CA bundle: registries may be reached through a proxy only the host trusts.
    mkdir -p "$dir/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    tar -C "$dir" -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$dir"
  fi
  echo "$tar"
}
have_image() { "$docker" image inspect "$1" >/dev/null 2>&1; }
rust_base="$(sed -n 's/^FROM \([^ ]*\) AS prepare$/\1/p' Dockerfile.builder)"
if ! have_image "$rust_base"; then
  step "stand-in for $rust_base (Debian minbase, gcc, this machine's Rust toolchain as the official image lays it out)"
  sysroot="$(rustc --print sysroot)"
  toolchain="$(basename "$sysroot")"
  dir="$work/rust"
  mkdir -p "$dir"
  tar -C "$dir" -xf "$(rootfs gcc gcc,libc6-dev)"
  mkdir -p "$dir/usr/local/rustup/toolchains/$toolchain" "$dir/usr/local/cargo/bin"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$dir/usr/local/rustup/toolchains/$toolchain" -xf -
  for tool in "$sysroot"/bin/*; do
    ln -s "/usr/local/rustup/toolchains/$toolchain/bin/$(basename "$tool")" "$dir/usr/local/cargo/bin/"
  done
  tar -C "$dir" -cf - . | "$docker" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change "LABEL io.policy-engine.stand-in=$toolchain" - "$rust_base" >/dev/null
  rm -rf "$dir"
fi

# --- the builder image ----------------------------------------------------------------------
step "docker build -f Dockerfile.builder -t policy-builder . (network only for the vendor step)"
started=$SECONDS
DOCKER_BUILDKIT=0 "$docker" build --network host -q -f Dockerfile.builder -t policy-builder . >/dev/null ||
  fail "the builder image did not build"
echo "built in $((SECONDS - started)) s; $("$docker" image inspect policy-builder --format '{{.Size}}') bytes"

# --- the README's example, as a non-root user that owns the checkout -------------------------
uid=4242
checkout="$work/checkout"
mkdir -p "$checkout"
git ls-files -z | tar --null -T - -cf - | tar -C "$checkout" -xf -
chown -R "$uid:$uid" "$checkout"
step "README: docker run --rm --user $uid:$uid -v \"\$PWD:/workspace\" policy-builder --manifest policy-manifest.yaml"
started=$SECONDS
(cd "$checkout" && "$docker" run --rm --network none --user "$uid:$uid" -v "$PWD:/workspace" \
  policy-builder --manifest policy-manifest.yaml) >"$work/readme.log" 2>&1 ||
  { tail -30 "$work/readme.log" >&2; fail "the README's example"; }
echo "built in $((SECONDS - started)) s"
for file in policy-engine Dockerfile build-info.json; do
  [ -f "$checkout/output/$file" ] || fail "the README's example wrote no output/$file"
  owner="$(stat -c %u "$checkout/output/$file")"
  [ "$owner" = "$uid" ] || fail "output/$file belongs to uid $owner, not the invoking user $uid"
done
echo "output/ belongs to the invoking user ($uid)"

# --- a user's own workspace outside the repository -------------------------------------------
user="$work/user"
mkdir -p "$user/acme-tag/src"
cat >"$user/acme-tag/Cargo.toml" <<'EOF'
[package]
name = "acme-tag"
version = "1.0.0"
edition = "2021"
publish = false

[dependencies]
policy-sdk = "0.1"
serde = { version = "1", features = ["derive"] }
EOF
cat >"$user/acme-tag/policy-definition.yaml" <<'EOF'
name: acme-tag
version: 1.0.0
description: Tags requests for the upstream.
phases: [request]
parameters:
  type: object
  properties: {value: {type: string}}
  required: [value]
  additionalProperties: false
EOF
cat >"$user/acme-tag/src/lib.rs" <<'EOF'
use policy_sdk::{Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy};

#[derive(serde::Deserialize)]
pub struct Params {
    value: String,
}

pub struct Tag(String);

impl Policy for Tag {
    type Params = Params;
    fn new(params: Params) -> Result<Self, PolicyError> {
        Ok(Tag(params.value))
    }
}

impl RequestPolicy for Tag {
    fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        Outcome::ready(policy_sdk::UpstreamRequestMods::new().set_header("x-acme-tag", &self.0))
    }
}

policy_sdk::export_policy!(Tag, phases = [request]);
EOF
cat >"$user/policy-manifest.yaml" <<'EOF'
version: v1
policies:
  - name: acme-tag
    version: 1.0.0
    uri: ./acme-tag
  - name: respond
    version: 1.0.0
    uri: file:///opt/policy-engine/sample-policies/respond/v1.0.0
EOF
chown -R "$uid:$uid" "$user"
step "a user's workspace: their own policy crate and a sample bundled in the image"
started=$SECONDS
"$docker" run --rm --network none --user "$uid:$uid" -v "$user:/workspace" \
  policy-builder --manifest policy-manifest.yaml >"$work/user.log" 2>&1 ||
  { tail -30 "$work/user.log" >&2; fail "the user's workspace did not build"; }
echo "built in $((SECONDS - started)) s"

# --- the runtime image behind the real Envoy ---------------------------------------------------
runtime_base="$(sed -n 's/^FROM //p' "$user/output/Dockerfile")"
if ! have_image "$runtime_base"; then
  step "stand-in for $runtime_base (Debian minbase: glibc and libgcc, as distroless/cc has)"
  "$docker" import --change 'USER 65532:65532' \
    --change 'LABEL io.policy-engine.stand-in=true' "$(rootfs minbase)" "$runtime_base" >/dev/null
fi
step "docker build output/ (the generated Dockerfile)"
DOCKER_BUILDKIT=0 "$docker" build -q -t policy-engine-e2e "$user/output" >/dev/null ||
  fail "the runtime image did not build"
echo "$("$docker" image inspect policy-engine-e2e --format '{{.Size}}') bytes"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
engine_port="$(free_port)"
admin_port="$(free_port)"
cat >"$work/routes.yaml" <<'EOF'
version: v1
routes:
  - route: tagged
    policies:
      - {name: acme-tag, version: 1.0.0, params: {value: from-docker}}
  - route: closed
    policies:
      - {name: respond, version: 1.0.0, params: {status: 403, body: closed}}
EOF
chmod a+r "$work/routes.yaml"
step "the runtime image: serve behind Envoy (--network host, routes mounted as the Dockerfile says)"
container="$("$docker" run -d --network host \
  -e POLICY_ENGINE_LISTEN="127.0.0.1:$engine_port" -e POLICY_ENGINE_ADMIN_LISTEN="127.0.0.1:$admin_port" \
  -v "$work/routes.yaml:/etc/policy-engine/routes.yaml:ro" policy-engine-e2e)"
containers+=("$container")

upstream_port="$(free_port)"
mkdir -p "$work/www"
echo ok >"$work/www/index.html"
python3 - "$upstream_port" "$work/upstream.log" <<'PY' &
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
pids+=($!)
listen_port="$(free_port)"
envoy_admin="$(free_port)"
"$user/output/policy-engine" envoy-config "$work/routes.yaml" --engine "127.0.0.1:$engine_port" \
  --bootstrap --listen "127.0.0.1:$listen_port" --admin "127.0.0.1:$envoy_admin" \
  --upstream "127.0.0.1:$upstream_port" >"$work/envoy.yaml" || fail "envoy-config"
"$envoy" -c "$work/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warning \
  >"$work/envoy.log" 2>&1 &
pids+=($!)

status_of() { "$docker" inspect --format '{{.State.Health.Status}}' "$container"; }
echo "waiting for the HEALTHCHECK (interval 10 s)"
for _ in $(seq 1 60); do
  [ "$(status_of)" = healthy ] && break
  [ "$("$docker" inspect --format '{{.State.Running}}' "$container")" = true ] ||
    { "$docker" logs "$container" >&2; fail "the engine container stopped"; }
  sleep 1
done
[ "$(status_of)" = healthy ] || { "$docker" logs "$container" >&2; fail "the container never turned healthy ($(status_of))"; }
echo "healthy"

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$envoy_admin/ready" 2>/dev/null && break
  sleep 0.1
done
tagged="$(curl -sS "http://127.0.0.1:$listen_port/tagged/x")" || fail "no answer through Envoy"
echo "$tagged" | grep -q '"x-acme-tag": "from-docker"' ||
  fail "the allowed request did not reach the upstream tagged by the user's policy: $tagged"
echo "allowed: the upstream saw x-acme-tag: from-docker"
closed="$(curl -sS -o "$work/closed.txt" -w '%{http_code}' "http://127.0.0.1:$listen_port/closed/x")"
[ "$closed" = 403 ] && [ "$(cat "$work/closed.txt")" = closed ] ||
  fail "the denied request got $closed $(cat "$work/closed.txt")"
echo "denied: 403 closed"

pid="$("$docker" inspect --format '{{.State.Pid}}' "$container")"
process_uid="$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")"
[ "$process_uid" != 0 ] || fail "the engine runs as root"
echo "the engine runs as uid $process_uid"
"$docker" run --rm --network none policy-engine-e2e build-info >"$work/build-info.json" ||
  fail "build-info"
python3 - "$work/build-info.json" <<'PY' || fail "build-info does not list the manifest's policies"
import json, sys
info = json.load(open(sys.argv[1]))
names = sorted(f"{p['name']}:{p['version']}" for p in info["policies"])
assert names == ["acme-tag:1.0.0", "respond:1.0.0"], names
print("build-info:", ", ".join(names))
PY
step "docker-e2e: every check passed"
