//! The end-to-end stack of the Envoy module host: the echo upstream and a real Envoy that loads
//! the development module (`libpolicy_dev_module.so`, built for each Envoy ABI by
//! `scripts/build-dev-module.sh`), its route configuration in a file it reloads.

use super::{
    Process, Reply, Request, Scratch, Upstream, envoy_bin, envoy_config, envoy_counter,
    launch_envoy, wait_for_text,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Envoy ABI a module is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// Envoy 1.36.2, the project's pinned Envoy.
    V1_36,
    /// Envoy 1.40.0 (versioned ABI `v0.2.0`).
    V1_40,
}

impl Abi {
    fn dir(self) -> &'static str {
        match self {
            Abi::V1_36 => "envoy-1.36",
            Abi::V1_40 => "envoy-1.40",
        }
    }

    /// The Envoy binary: 1.36 as [`envoy_bin`]; 1.40 from `$ENVOY_BIN_1_40`, else the one
    /// `scripts/install-envoy.sh 1.40.0` put in `.venv-envoy-1.40.0`.
    pub fn envoy(self) -> PathBuf {
        match self {
            Abi::V1_36 => envoy_bin(),
            Abi::V1_40 => {
                if let Some(bin) = std::env::var_os("ENVOY_BIN_1_40") {
                    return bin.into();
                }
                let local = super::repo_root().join(".venv-envoy-1.40.0/bin/envoy");
                assert!(
                    local.exists(),
                    "no Envoy 1.40 found: run scripts/install-envoy.sh 1.40.0 (or set ENVOY_BIN_1_40)"
                );
                local
            }
        }
    }
}

/// The directory holding the development module for `abi`: `target/<profile>/modules/<abi>/`,
/// next to the running test's own executable.
pub fn module_dir(abi: Abi) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps")
        .join("modules")
        .join(abi.dir());
    assert!(
        dir.join("libpolicy_dev_module.so").exists(),
        "{} has no libpolicy_dev_module.so: run scripts/build-dev-module.sh",
        dir.display()
    );
    dir
}

/// Upstream and an Envoy running the development module, ready for requests.
pub struct ModuleStack {
    pub upstream: Upstream,
    /// Envoy's listener port.
    pub port: u16,
    admin_port: u16,
    _envoy: Process,
    pub scratch: Scratch,
}

impl ModuleStack {
    /// Envoy for `abi` with the module reading `routes` from a file it checks every 100 ms.
    pub fn start(abi: Abi, routes: &str) -> ModuleStack {
        ModuleStack::start_on(abi, routes, "")
    }

    /// Envoy for `abi` with the module reading `routes` from a file; `settings` are more
    /// lines of the module's settings (`maxBodyBytes: 10`).
    pub fn start_on(abi: Abi, routes: &str, settings: &str) -> ModuleStack {
        let scratch = Scratch::new();
        std::fs::write(scratch.path("routes.yaml"), routes).expect("write the config");
        let filter_config = format!(
            "configFile: {}\nreloadIntervalMs: 100\n{settings}",
            scratch.path("routes.yaml").display()
        );
        ModuleStack::try_start(abi, scratch, &filter_config)
            .unwrap_or_else(|log| panic!("Envoy did not start the module; its log:\n{log}"))
    }

    /// Envoy for `abi` with `filter_config` as the development module's configuration; Envoy's
    /// log when it does not start.
    pub fn try_start(
        abi: Abi,
        scratch: Scratch,
        filter_config: &str,
    ) -> Result<ModuleStack, String> {
        let library = module_dir(abi).join("libpolicy_dev_module.so");
        ModuleStack::try_start_library(abi, scratch, filter_config, &library)
    }

    /// Envoy for `abi` loading the module `library` (`.../lib<name>.so`, e.g. one the builder
    /// built) with `filter_config`; Envoy's log when it does not start.
    pub fn try_start_library(
        abi: Abi,
        scratch: Scratch,
        filter_config: &str,
        library: &Path,
    ) -> Result<ModuleStack, String> {
        let dir = library.parent().expect("the module's directory");
        let name = library
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("lib"))
            .expect("a module named lib<name>.so");
        let upstream = Upstream::start();
        let config = serde_json::to_string(filter_config).expect("a JSON string");
        let filter = format!(
            r#"          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: {name}, do_not_close: true}}
              filter_name: policy
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {config}
"#
        );
        // The module logs through Envoy's logger: its info lines, Envoy's warnings.
        let (envoy, port, admin_port) = launch_envoy(
            &abi.envoy(),
            &scratch,
            &["--component-log-level", "dynamic_modules:info"],
            &[("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir)],
            |port, admin_port| envoy_config(port, admin_port, upstream.port, None, &filter, ""),
        )?;
        Ok(ModuleStack {
            upstream,
            port,
            admin_port,
            _envoy: envoy,
            scratch,
        })
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
        std::fs::rename(&staged, self.scratch.path("routes.yaml")).expect("swap the config");
    }

    /// Replaces the route configuration file and waits until the module has loaded it (one more
    /// `configuration loaded` line); panics when it rejects it or does not load it in `timeout`.
    pub fn apply_config(&self, config: &str, timeout: Duration) {
        let count = |needle: &str| self.logs().matches(needle).count();
        let (loaded, rejected) = (
            count("configuration loaded"),
            count("configuration rejected"),
        );
        self.write_config(config);
        let deadline = std::time::Instant::now() + timeout;
        while count("configuration loaded") == loaded {
            assert_eq!(
                count("configuration rejected"),
                rejected,
                "the module rejected the configuration; Envoy's log:\n{}",
                self.logs()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the module never loaded the new configuration; Envoy's log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything Envoy (and so the module) logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.scratch.path("envoy.log")).unwrap_or_default()
    }

    /// Waits until Envoy's log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for_text(|| self.logs(), needle, timeout, "Envoy")
    }

    /// Envoy's admin `path` (e.g. `/stats?filter=policy_`), as text.
    pub fn envoy_admin(&self, path: &str) -> String {
        Request::get(path)
            .send(self.admin_port)
            .expect("query Envoy's admin")
            .text()
    }

    /// The value of Envoy counter `name`.
    pub fn envoy_counter(&self, name: &str) -> u64 {
        envoy_counter(self.admin_port, name)
    }
}
