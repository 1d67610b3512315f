//! Route configuration: parse ([`raw`]), then compile against the [`Registry`] into a
//! [`Snapshot`], reporting every problem at once.

mod compile;
mod instances;
mod problem;
pub mod raw;

pub use instances::InstanceCounts;
pub(crate) use instances::Instances;
pub use problem::{ConfigError, Problem};
pub use raw::{OnConditionError, OnFailure, UnknownRoute};

use crate::{Registry, Snapshot};

/// The largest configuration document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Parses and compiles a route configuration document (YAML or JSON) with new policy
/// instances throughout. `source_name` names the file or stream in errors.
///
/// # Errors
/// [`ConfigError`] naming the source and every problem; nothing is partially activated.
pub fn load(text: &str, source_name: &str, registry: &Registry) -> Result<Snapshot, ConfigError> {
    load_keeping(text, source_name, registry, None)
}

/// [`load`] for a document that replaces `running`: every enabled entry whose policy, version
/// and parameters (and route, unless the policy is shared across routes) equal one of
/// `running`'s gets that entry's instance, state and all; the others get new instances.
///
/// # Errors
/// [`ConfigError`] naming the source and every problem; nothing is partially activated.
pub fn load_keeping(
    text: &str,
    source_name: &str,
    registry: &Registry,
    running: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ConfigError::TooLarge {
            source_name: source_name.to_owned(),
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let raw: raw::RawConfig =
        serde_saphyr::from_str(text).map_err(|source| ConfigError::Parse {
            source_name: source_name.to_owned(),
            source: Box::new(source),
        })?;
    compile_raw(raw, source_name, registry, running)
        .map(|s| s.with_origin("file", document_version(text)))
}

/// A document's version in file mode: the first 16 hex digits of its SHA-256, the same on every
/// engine build and machine, so replicas' `/config`, metrics and logs can be compared.
pub fn document_version(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiles a route configuration document already parsed into JSON values, as it arrives over
/// xDS, keeping `running`'s unchanged instances as [`load_keeping`] does. `source_name` names
/// the stream or resource in errors.
///
/// # Errors
/// [`ConfigError`] naming the source and every problem; nothing is partially activated.
pub fn load_value(
    value: serde_json::Value,
    source_name: &str,
    registry: &Registry,
    running: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let raw: raw::RawConfig =
        serde_json::from_value(value).map_err(|source| ConfigError::Shape {
            source_name: source_name.to_owned(),
            source,
        })?;
    compile_raw(raw, source_name, registry, running).map(|s| s.with_origin("xds", ""))
}

fn compile_raw(
    raw: raw::RawConfig,
    source_name: &str,
    registry: &Registry,
    running: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    compile::compile(raw, source_name, registry, running).map_err(|problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_a_stable_content_hash() {
        // SHA-256 of the text, first 8 bytes: fixed across builds, Rust versions and machines.
        assert_eq!(
            super::document_version("version: v1\nroutes: []\n"),
            "4fcc30cc4d66942e"
        );
        assert_ne!(
            super::document_version("version: v1\nroutes: []\n"),
            super::document_version("version: v1\nroutes: [] \n")
        );
    }
}
