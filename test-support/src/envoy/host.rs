//! One end-to-end scenario on every host: the ext_proc engine, and the Envoy module on each ABI.
//! A scenario is `fn name(kind: Kind)` using [`Host`]; [`on_every_host!`](crate::on_every_host)
//! makes a test of it per host (`engine::name`, `module_1_36::name`, `module_1_40::name`).

use super::module::{Abi, ModuleStack};
use super::{Reply, Request, Stack, Upstream, wait_for_text};
use std::time::Duration;

/// Which host a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The development engine behind Envoy 1.36's ext_proc filter.
    Engine,
    /// The development module inside Envoy of this ABI.
    Module(Abi),
}

/// What a scenario does with a running host.
pub trait Host {
    /// Sends `request` through Envoy.
    fn send(&self, request: Request<'_>) -> Reply;
    /// The echo upstream behind Envoy.
    fn upstream(&self) -> &Upstream;
    /// Replaces the route configuration file (the host reloads it within ~100 ms).
    fn write_config(&self, config: &str);
    /// Replaces the route configuration file and waits until the host serves it.
    fn apply_config(&self, config: &str, timeout: Duration);
    /// The value of Envoy's counter `name`.
    fn envoy_counter(&self, name: &str) -> u64;
    /// What the policies' host logged so far (the engine's log, or Envoy's with the module's).
    fn logs(&self) -> String;
    /// The ext_proc stack, for what only the engine has (its admin API and `/metrics`).
    fn engine(&self) -> Option<&Stack> {
        None
    }
    /// Waits until the host's log contains `needle`; panics with the log after `timeout`.
    fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for_text(|| self.logs(), needle, timeout, "the host")
    }
}

impl Host for Stack {
    fn send(&self, request: Request<'_>) -> Reply {
        Stack::send(self, request)
    }
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }
    fn write_config(&self, config: &str) {
        Stack::write_config(self, config);
    }
    fn apply_config(&self, config: &str, timeout: Duration) {
        Stack::apply_config(self, config, timeout);
    }
    fn envoy_counter(&self, name: &str) -> u64 {
        Stack::envoy_counter(self, name)
    }
    fn logs(&self) -> String {
        self.engine_logs()
    }
    fn engine(&self) -> Option<&Stack> {
        Some(self)
    }
}

impl Host for ModuleStack {
    fn send(&self, request: Request<'_>) -> Reply {
        ModuleStack::send(self, request)
    }
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }
    fn write_config(&self, config: &str) {
        ModuleStack::write_config(self, config);
    }
    fn apply_config(&self, config: &str, timeout: Duration) {
        ModuleStack::apply_config(self, config, timeout);
    }
    fn envoy_counter(&self, name: &str) -> u64 {
        ModuleStack::envoy_counter(self, name)
    }
    fn logs(&self) -> String {
        ModuleStack::logs(self)
    }
}

impl Kind {
    /// The host with `config` as its route configuration file.
    pub fn start(self, config: &str) -> Box<dyn Host> {
        self.start_with_body_limit(config, None)
    }

    /// [`Kind::start`] with the largest body a chain accepts, when given.
    pub fn start_with_body_limit(self, config: &str, limit: Option<usize>) -> Box<dyn Host> {
        match self {
            Kind::Engine => {
                let limit = limit.map(|l| l.to_string());
                let args: Vec<&str> = limit
                    .as_deref()
                    .map(|l| vec!["--max-body-bytes", l])
                    .unwrap_or_default();
                Box::new(Stack::start_with(Some(config), &args))
            }
            Kind::Module(abi) => {
                let settings = limit
                    .map(|l| format!("maxBodyBytes: {l}\n"))
                    .unwrap_or_default();
                Box::new(ModuleStack::start_on(abi, config, &settings))
            }
        }
    }
}

/// Makes a test per host of each scenario `fn name(kind: Kind)`: `engine::name`,
/// `module_1_36::name` and `module_1_40::name`.
#[macro_export]
macro_rules! on_every_host {
    ($($scenario:ident),* $(,)?) => {
        mod engine {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::envoy::host::Kind::Engine);
            })*
        }
        mod module_1_36 {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::envoy::host::Kind::Module(
                    $crate::envoy::module::Abi::V1_36,
                ));
            })*
        }
        mod module_1_40 {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::envoy::host::Kind::Module(
                    $crate::envoy::module::Abi::V1_40,
                ));
            })*
        }
    };
}
