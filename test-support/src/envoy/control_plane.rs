//! The reference control plane as a process: serves a directory over ADS on a fixed port (so a
//! restart comes back at the same address) and records the JSON events it prints.

use super::{Process, Scratch};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running control plane.
pub struct ControlPlane {
    pub port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    process: Option<Process>,
    dir: PathBuf,
    _scratch: Option<Scratch>,
}

impl ControlPlane {
    /// Starts a control plane on `port` serving a new scratch directory.
    pub fn start(port: u16) -> ControlPlane {
        let scratch = Scratch::new();
        let dir = scratch.path("resources");
        std::fs::create_dir_all(&dir).expect("create the resource directory");
        let mut plane = ControlPlane {
            port,
            events: Arc::default(),
            process: None,
            dir,
            _scratch: Some(scratch),
        };
        plane.restart();
        plane
    }

    /// The xDS server URL for the engine's `--xds-server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes resource `name` (the file `<name>.yaml`) atomically.
    pub fn write(&self, name: &str, document: &str) {
        let staged = self.dir.join(".staged");
        std::fs::write(&staged, document).expect("write the resource");
        std::fs::rename(&staged, self.dir.join(format!("{name}.yaml"))).expect("swap it in");
    }

    /// Kills the process (SIGKILL: the streams drop without a goodbye).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts the process again on the same port and directory; earlier events are kept.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(super::workspace_bin("control-plane"))
            .arg("--dir")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--poll-interval-ms", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the control plane");
        let stdout = child.stdout.take().expect("stdout");
        self.process = Some(Process(child));
        let events = Arc::clone(&self.events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    events.lock().expect("lock").push(event);
                }
            }
        });
        let address = format!("127.0.0.1:{}", self.port);
        self.wait_for("listening", |e| e["address"] == address.as_str());
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().expect("lock").clone()
    }

    /// Waits for the first event of kind `kind` matching `pick`; panics with every event after
    /// ten seconds.
    pub fn wait_for(
        &self,
        kind: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self
                .events()
                .into_iter()
                .find(|e| e["event"] == kind && pick(e))
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event from the control plane; events: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
