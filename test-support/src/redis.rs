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
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            scratch: Scratch::new(),
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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

    /// Sends one command; the first line of the raw reply (`+OK`, `:3`, `$-1` ...), or `None`
    /// when the server cannot be reached.
    pub fn query(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(command.as_bytes()).ok()?;
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

    /// The number of keys in database 0.
    pub fn keys(&self) -> u64 {
        self.query(&["DBSIZE"])
            .and_then(|r| r.strip_prefix(':')?.parse().ok())
            .expect("DBSIZE answers")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
