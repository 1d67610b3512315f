//! The Envoy dynamic-module host of the policy core: the same route configuration, chains,
//! failures and answers as the ext_proc engine, run on Envoy's own worker threads through
//! `envoy.filters.http.dynamic_modules` (no gRPC hop).
//!
//! A module is a `cdylib` crate that depends on this one with the feature of its Envoy ABI
//! (`envoy-1-36` or `envoy-1-40`) and names the function building its registry:
//!
//! ```text
//! policy_envoy_module::export_module!(my_registry);
//! fn my_registry() -> policy_core::Registry { /* register the policy crates */ }
//! ```
//!
//! Layers: [`settings`] reads Envoy's `filter_config`; [`host`] holds a filter configuration
//! and its snapshot (reloaded from a file when it changes); [`filter`] runs one stream over the
//! safe [`envoy::Envoy`] view; `abi` (private) is the only code that touches Envoy's pointers.
#![deny(unsafe_code)]

// Not in unit tests: they drive the filter through a fake `Envoy`, without Envoy's callbacks.
#[cfg(not(test))]
mod abi;
pub mod envoy;
pub mod filter;
pub mod host;
#[cfg(not(test))]
mod logging;
mod runtime;
pub mod settings;

/// The registry type an exported module builds.
pub use policy_core::Registry;

/// What this module is, for the log line Envoy shows when it loads it.
pub fn build_info() -> &'static str {
    concat!(
        env!("CARGO_PKG_NAME"),
        " ",
        env!("CARGO_PKG_VERSION"),
        " for Envoy ",
        abi_name!()
    )
}

#[cfg(feature = "envoy-1-36")]
macro_rules! abi_name {
    () => {
        "1.36"
    };
}
#[cfg(all(feature = "envoy-1-40", not(feature = "envoy-1-36")))]
macro_rules! abi_name {
    () => {
        "1.40"
    };
}
use abi_name;

/// Makes the calling `cdylib` crate an Envoy module whose policies `$registry()` registers;
/// `build_info` (the builder's `build-info.json`) is logged when Envoy loads the module.
#[macro_export]
macro_rules! export_module {
    ($registry:path) => {
        $crate::export_module!($registry, build_info = "");
    };
    ($registry:path, build_info = $info:expr) => {
        // SAFETY: the symbols the module's ABI layer reads the registry and the build information
        // through, with the signatures it declares.
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub fn __policy_module_registry() -> $crate::Registry {
            $registry()
        }

        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub fn __policy_module_build_info() -> &'static str {
            $info
        }
    };
}
