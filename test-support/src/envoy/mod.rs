//! The end-to-end stack: the echo upstream, the development engine and a real Envoy, each on
//! free loopback ports, stopped when the [`Stack`] drops.

pub mod control_plane;
pub mod host;
pub mod http;
pub mod module;
pub mod traffic;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use http::{Reply, Request};
pub use upstream::Upstream;

/// The routes of the generated Envoy configuration: `(path prefix, route name)`. Everything
/// else goes to the route named `other`.
pub const ROUTES: [(&str, &str); 7] = [
    ("/public", "public"),
    ("/private", "private"),
    ("/body", "body"),
    ("/cel", "cel"),
    ("/meta", "meta"),
    ("/short", "short"),
    ("/fail", "fail"),
];

/// The Envoy binary: `$ENVOY_BIN`, else the one `scripts/install-envoy.sh` put in `.venv`.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return bin.into();
    }
    let local = repo_root().join(".venv/bin/envoy");
    assert!(
        local.exists(),
        "no Envoy found: run scripts/install-envoy.sh (or set ENVOY_BIN)"
    );
    local
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace, next to the running test's own executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`): the `policy-e2e` package builds
/// `dev-engine` and `control-plane` for its tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: it is built with the policy-e2e package's tests",
        bin.display()
    );
    bin
}

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "policy-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ext_proc filter settings a stack's Envoy runs with. The default is what `docs/envoy.md`
/// recommends: Envoy sends everything a chain could need, the engine turns off per request what
/// its route's chain does not.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub allow_mode_override: bool,
    pub response_header_mode: &'static str,
    pub request_body_mode: &'static str,
    pub response_body_mode: &'static str,
    /// `per_connection_buffer_limit_bytes` of the listener and the upstream cluster.
    pub buffer_limit_bytes: Option<u64>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            allow_mode_override: true,
            response_header_mode: "SEND",
            request_body_mode: "BUFFERED",
            response_body_mode: "BUFFERED",
            buffer_limit_bytes: None,
        }
    }
}

/// Upstream, engine and Envoy, ready for requests.
pub struct Stack {
    pub upstream: Upstream,
    /// Envoy's listener port.
    pub port: u16,
    admin_port: u16,
    /// The engine's ext_proc address, as it announced it.
    pub engine_address: String,
    /// The engine's admin API port (unless started with `--admin-listen off`).
    pub engine_admin_port: Option<u16>,
    /// The engine's metrics-only port (when started with `--metrics-listen`).
    pub engine_metrics_port: Option<u16>,
    engine_pid: u32,
    /// Further engine replicas behind the same Envoy cluster ([`Stack::start_replicas`]).
    pub replicas: Vec<Replica>,
    // Drop order: Envoy first, then the engines, then the files.
    _envoy: Process,
    _engine: Process,
    pub scratch: Scratch,
}

/// An engine replica besides the stack's first engine, watching the same route configuration.
pub struct Replica {
    /// Its admin API port.
    pub admin_port: Option<u16>,
    _process: Process,
}

impl Stack {
    /// Starts everything with `config` as the engine's route configuration file.
    pub fn start(config: &str) -> Stack {
        Stack::start_with(Some(config), &[])
    }

    /// Starts everything; `config: None` leaves the configuration file absent. `engine_args`
    /// are added to the engine's command line.
    pub fn start_with(config: Option<&str>, engine_args: &[&str]) -> Stack {
        Stack::start_engine(&workspace_bin("dev-engine"), config, engine_args)
    }

    /// Starts everything with the engine binary `engine` (e.g. one the builder built).
    pub fn start_engine(engine: &Path, config: Option<&str>, engine_args: &[&str]) -> Stack {
        Stack::start_custom(engine, config, engine_args, &EnvoyOptions::default())
    }

    /// [`Stack::start_with`] with Envoy's ext_proc filter set up as `envoy` says.
    pub fn start_with_envoy(config: &str, engine_args: &[&str], envoy: &EnvoyOptions) -> Stack {
        Stack::start_custom(
            &workspace_bin("dev-engine"),
            Some(config),
            engine_args,
            envoy,
        )
    }

    /// Starts `replicas` dev engines (at least 1) on one route configuration, behind one Envoy
    /// cluster that balances ext_proc streams across them round robin. The first is the stack's
    /// engine, the others are in [`Stack::replicas`].
    pub fn start_replicas(config: &str, replicas: usize) -> Stack {
        Stack::start_replicas_with_env(config, replicas, &[])
    }

    /// [`Stack::start_replicas`] with `env` added to the engines' environment.
    pub fn start_replicas_with_env(config: &str, replicas: usize, env: &[(&str, &Path)]) -> Stack {
        Stack::start_n(
            &workspace_bin("dev-engine"),
            Some(config),
            &[],
            &EnvoyOptions::default(),
            (replicas.max(1), env),
        )
    }

    /// Starts everything: `engine` with `config` and `engine_args`, Envoy as `envoy` says.
    pub fn start_custom(
        engine: &Path,
        config: Option<&str>,
        engine_args: &[&str],
        envoy: &EnvoyOptions,
    ) -> Stack {
        Stack::start_n(engine, config, engine_args, envoy, (1, &[]))
    }

    fn start_n(
        engine: &Path,
        config: Option<&str>,
        engine_args: &[&str],
        envoy: &EnvoyOptions,
        (replicas, env): (usize, &[(&str, &Path)]),
    ) -> Stack {
        let scratch = Scratch::new();
        let upstream = Upstream::start();
        if let Some(config) = config {
            std::fs::write(scratch.path("routes.yaml"), config).expect("write the config");
        }
        let Spawned {
            process: first,
            address: engine_address,
            admin_port: engine_admin_port,
            metrics_port: engine_metrics_port,
        } = spawn_engine(engine, &scratch, (engine_args, env), "engine.log");
        let engine_pid = first.0.id();
        let mut addresses = vec![engine_address.clone()];
        let mut others = Vec::new();
        for n in 1..replicas {
            let log = format!("engine-{n}.log");
            let replica = spawn_engine(engine, &scratch, (engine_args, env), &log);
            addresses.push(replica.address);
            others.push(Replica {
                admin_port: replica.admin_port,
                _process: replica.process,
            });
        }
        let (envoy, port, admin_port) =
            launch_envoy(&envoy_bin(), &scratch, &[], &[], |port, admin_port| {
                bootstrap(port, admin_port, &addresses, upstream.port, envoy)
            })
            .unwrap_or_else(|log| panic!("Envoy did not become ready; its log:\n{log}"));
        Stack {
            upstream,
            port,
            admin_port,
            engine_address,
            engine_admin_port,
            engine_metrics_port,
            engine_pid,
            replicas: others,
            _envoy: envoy,
            _engine: first,
            scratch,
        }
    }

    /// Sends `request` through Envoy.
    pub fn send(&self, request: Request<'_>) -> Reply {
        request
            .send(self.port)
            .unwrap_or_else(|e| panic!("request through Envoy failed: {e}"))
    }

    /// Replaces the route configuration file atomically (write, then rename over it).
    pub fn write_config(&self, config: &str) {
        let staged = self.scratch.path("routes.yaml.new");
        std::fs::write(&staged, config).expect("write the new config");
        std::fs::rename(&staged, self.config_path()).expect("swap the config");
    }

    /// Replaces the route configuration file and waits until the engine serves it (its
    /// `/config` version changes); panics when it does not within `timeout`.
    pub fn apply_config(&self, config: &str, timeout: Duration) {
        let version = || self.admin(Request::get("/config")).json()["version"].clone();
        let before = version();
        self.write_config(config);
        let deadline = Instant::now() + timeout;
        while version() == before {
            assert!(
                Instant::now() < deadline,
                "the engine never applied the new configuration; its log:\n{}",
                self.engine_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The route configuration file the engine watches.
    pub fn config_path(&self) -> PathBuf {
        self.scratch.path("routes.yaml")
    }

    /// Everything the engine logged so far.
    pub fn engine_logs(&self) -> String {
        std::fs::read_to_string(self.scratch.path("engine.log")).unwrap_or_default()
    }

    /// Waits until the engine's log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for_text(|| self.engine_logs(), needle, timeout, "the engine")
    }

    /// Sends SIGHUP to the engine.
    pub fn hangup_engine(&self) {
        self.signal_engine("-HUP");
    }

    /// Sends `signal` (e.g. `-TERM`) to the engine.
    pub fn signal_engine(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.engine_pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Sends `request` to the engine's admin API.
    pub fn admin(&self, request: Request<'_>) -> Reply {
        let port = self
            .engine_admin_port
            .expect("the engine serves its admin API");
        request
            .send(port)
            .unwrap_or_else(|e| panic!("admin request failed: {e}"))
    }

    /// Whether the engine process is still running.
    pub fn engine_running(&mut self) -> bool {
        matches!(self._engine.0.try_wait(), Ok(None))
    }

    /// Waits for the engine to exit; its exit code.
    pub fn wait_engine(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self._engine.0.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the engine did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of Envoy counter `name` (e.g. `http.e2e.ext_proc.stream_msgs_sent`).
    pub fn envoy_counter(&self, name: &str) -> u64 {
        envoy_counter(self.admin_port, name)
    }
}

/// Waits until `read()` contains `needle`; panics with what it read after `timeout`.
pub(crate) fn wait_for_text(
    read: impl Fn() -> String,
    needle: &str,
    timeout: Duration,
    who: &str,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{who} never logged {needle:?}; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of counter `name` of the Envoy whose admin API is on `admin_port`.
pub(crate) fn envoy_counter(admin_port: u16, name: &str) -> u64 {
    let path = format!("/stats?filter=^{}$", name.replace('.', "\\."));
    let reply = Request::get(&path)
        .send(admin_port)
        .expect("query Envoy's admin");
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The sorted `name:version` keys of a policy list (`policy-engine policies`, `GET /policies`).
pub fn policy_keys(list: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = list
        .as_array()
        .expect("a list of policies")
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?")
            )
        })
        .collect();
    keys.sort();
    keys
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// A started engine and what it announced.
struct Spawned {
    process: Process,
    address: String,
    admin_port: Option<u16>,
    metrics_port: Option<u16>,
}

/// Starts `engine` (on a free loopback port unless `extra` has `--listen`) and returns it with
/// the addresses it announced.
fn spawn_engine(
    engine: &Path,
    scratch: &Scratch,
    (extra, env): (&[&str], &[(&str, &Path)]),
    log_name: &str,
) -> Spawned {
    let log = std::fs::File::create(scratch.path(log_name)).expect("create the engine log");
    let config = scratch.path("routes.yaml");
    let mut command = Command::new(engine);
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--admin-listen") {
        command.args(["--admin-listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--xds-server") {
        if !extra.contains(&"--reload-interval-ms") {
            command.args(["--reload-interval-ms", "100"]);
        }
        command.arg("--config").arg(&config);
    }
    let mut child = command
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", engine.display()));
    let stdout = child.stdout.take().expect("engine stdout");
    let process = Process(child);
    let (tx, rx) = mpsc::channel();
    let (admin_tx, admin_rx) = mpsc::channel();
    let (metrics_tx, metrics_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("policy-engine listening on ") {
                let _ = tx.send(address.to_owned());
            } else if let Some(address) = line.strip_prefix("policy-engine admin on ") {
                let _ = admin_tx.send(address.to_owned());
            } else if let Some(address) = line.strip_prefix("policy-engine metrics on ") {
                let _ = metrics_tx.send(address.to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "the engine did not start; its log:\n{}",
                std::fs::read_to_string(scratch.path(log_name)).unwrap_or_default()
            )
        });
    let port = |rx: mpsc::Receiver<String>| {
        rx.try_recv()
            .ok()
            .and_then(|a| a.rsplit_once(':')?.1.parse().ok())
    };
    Spawned {
        process,
        address,
        admin_port: port(admin_rx),
        metrics_port: port(metrics_rx),
    }
}

/// Starts Envoy (`bin`, `args`, `env`) with the configuration `config(port, admin_port)` makes
/// for free loopback ports; the process and its ports, or its log. Another process may take a
/// free port before Envoy binds it: then it tries again with new ports.
pub(crate) fn launch_envoy(
    bin: &Path,
    scratch: &Scratch,
    args: &[&str],
    env: &[(&str, &Path)],
    config: impl Fn(u16, u16) -> String,
) -> Result<(Process, u16, u16), String> {
    let mut attempts = 0;
    loop {
        let (port, admin_port) = (free_port(), free_port());
        std::fs::write(scratch.path("envoy.yaml"), config(port, admin_port))
            .expect("write the bootstrap");
        match start_envoy_with(bin, scratch, admin_port, args, env) {
            Ok(process) => return Ok((process, port, admin_port)),
            Err(log) if attempts < 4 && log.contains("Address already in use") => attempts += 1,
            Err(log) => return Err(log),
        }
    }
}

/// Starts `bin` with the scratch's `envoy.yaml`, `args` and `env`; waits until it is ready. Its
/// log when it exits or never gets ready.
pub(crate) fn start_envoy_with(
    bin: &Path,
    scratch: &Scratch,
    admin_port: u16,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<Process, String> {
    let log = std::fs::File::create(scratch.path("envoy.log")).expect("create the Envoy log");
    let child = Command::new(bin)
        .arg("-c")
        .arg(scratch.path("envoy.yaml"))
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start Envoy");
    let mut process = Process(child);
    let read_log = || std::fs::read_to_string(scratch.path("envoy.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Request::get("/ready")
            .send(admin_port)
            .is_ok_and(|reply| reply.status == 200)
        {
            return Ok(process);
        }
        if matches!(process.0.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
            return Err(read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Envoy configuration under test with the ext_proc filter; `docs/envoy.md` explains each
/// ext_proc setting.
fn bootstrap(
    port: u16,
    admin_port: u16,
    engine_addresses: &[String],
    upstream_port: u16,
    envoy: &EnvoyOptions,
) -> String {
    let EnvoyOptions {
        allow_mode_override,
        response_header_mode,
        request_body_mode,
        response_body_mode,
        buffer_limit_bytes,
    } = envoy;
    let endpoints: String = engine_addresses
        .iter()
        .map(|engine_address| {
            let address = match engine_address.strip_prefix("unix:") {
                Some(path) => format!("{{pipe: {{path: \"{path}\"}}}}"),
                None => {
                    let (host, port) = engine_address
                        .rsplit_once(':')
                        .expect("the engine announces HOST:PORT");
                    format!("{{socket_address: {{address: {host}, port_value: {port}}}}}")
                }
            };
            format!("        - endpoint: {{address: {address}}}\n")
        })
        .collect();
    let filter = format!(
        r#"          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: policy_engine}}
                timeout: 5s
              failure_mode_allow: false
              allow_mode_override: {allow_mode_override}
              message_timeout: 2s
              request_attributes: [xds.route_name, source.address]
              mutation_rules: {{allow_all_routing: true}}
              processing_mode:
                request_header_mode: SEND
                response_header_mode: {response_header_mode}
                request_body_mode: {request_body_mode}
                response_body_mode: {response_body_mode}
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
"#
    );
    let cluster = format!(
        r#"  - name: policy_engine
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: policy_engine
      endpoints:
      - lb_endpoints:
{endpoints}"#
    );
    envoy_config(
        port,
        admin_port,
        upstream_port,
        *buffer_limit_bytes,
        &filter,
        &cluster,
    )
}

/// An Envoy configuration: a listener on `port` with the test routes ([`ROUTES`]), the HTTP
/// filter `filter` before the router, the upstream cluster and `clusters`.
pub(crate) fn envoy_config(
    port: u16,
    admin_port: u16,
    upstream_port: u16,
    buffer_limit_bytes: Option<u64>,
    filter: &str,
    clusters: &str,
) -> String {
    let buffer_limit = buffer_limit_bytes
        .map(|n| format!("\n    per_connection_buffer_limit_bytes: {n}"))
        .unwrap_or_default();
    let mut routes = String::new();
    for (prefix, name) in ROUTES
        .iter()
        .copied()
        .chain(std::iter::once(("/", "other")))
    {
        routes.push_str(&format!(
            "              - name: {name}\n                match: {{prefix: \"{prefix}\"}}\n                route: {{cluster: upstream}}\n"
        ));
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}{buffer_limit}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: e2e
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s{buffer_limit}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
{clusters}"#
    )
}
