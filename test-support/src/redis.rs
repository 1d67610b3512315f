//! A real `redis-server` on a free loopback port, for the shared-store tests: started by the
//! test, stopped by its pid on drop (no system service). `scripts/install-redis.sh` installs
//! the binary; `REDIS_SERVER_BIN` names another.

use crate::envoy::{Scratch, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) Redis server of the test's own.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    /// The TLS port, when the server also serves TLS ([`RedisServer::start_tls`]).
    tls_port: Option<u16>,
    child: Option<Child>,
    scratch: Scratch,
}

fn redis_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

impl RedisServer {
    /// Starts a server without persistence on a free loopback port; waits until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with_password(None)
    }

    /// [`RedisServer::start`], requiring `password` (`requirepass`) when one is given.
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            password: password.map(str::to_owned),
            tls_port: None,
            child: None,
            scratch: Scratch::new(),
        };
        server.restart();
        server
    }

    /// [`RedisServer::start`], also serving TLS on a second port with a certificate for
    /// `127.0.0.1` signed by a CA of its own ([`RedisServer::ca_file`]), made with `openssl`.
    pub fn start_tls() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            password: None,
            tls_port: Some(free_port()),
            child: None,
            scratch: Scratch::new(),
        };
        server.make_certificates();
        server.restart();
        server
    }

    /// The CA that signed the TLS certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.scratch.path("ca.pem")
    }

    /// `rediss://127.0.0.1:TLS_PORT/0`.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}/0")
    }

    fn make_certificates(&self) {
        let path = |name: &str| self.scratch.path(name);
        std::fs::write(
            path("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            ]
            .concat()
            .into_iter()
            .chain([
                "-subj",
                "/CN=policy-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ])
            .collect(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(self.scratch.path(""))
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Stops the server (its counters are gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        let log =
            std::fs::File::create(self.scratch.path("redis.log")).expect("create the Redis log");
        let child = Command::new(redis_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .args(self.tls_args())
            .arg("--dir")
            .arg(self.scratch.path(""))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (scripts/install-redis.sh installs it; REDIS_SERVER_BIN names another)",
                    redis_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.scratch.path("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(port) = self.tls_port else {
            return Vec::new();
        };
        let file = |name: &str| self.scratch.path(name).display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    /// Sends one command (after `AUTH` when the server has a password); the first line of the
    /// raw reply (`+OK`, `:3`, `$-1` ...), or `None` when the server cannot be reached.
    pub fn query(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        if let Some(password) = &self.password {
            stream.write_all(&encode(&["AUTH", password])).ok()?;
            let _ = read_line(&mut stream)?;
        }
        stream.write_all(&encode(args)).ok()?;
        read_line(&mut stream)
    }

    /// The number of keys in database 0.
    pub fn keys(&self) -> u64 {
        self.query(&["DBSIZE"])
            .and_then(|r| r.strip_prefix(':')?.parse().ok())
            .expect("DBSIZE answers")
    }
}

/// A command in RESP.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    command.into_bytes()
}

/// One reply line, without its CRLF.
fn read_line(stream: &mut TcpStream) -> Option<String> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        reply.push(byte[0]);
    }
    reply.truncate(reply.len() - 2);
    String::from_utf8(reply).ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
