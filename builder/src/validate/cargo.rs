//! The crate's manifest, through `cargo metadata`: a library that depends on the SDK the builder
//! builds with.

use super::Toolchain;
use crate::report::{Problem, line_of};
use cargo_metadata::{DependencyKind, MetadataCommand};
use std::path::Path;

/// What validation learns of a crate's package.
pub(super) struct Package {
    /// Its name.
    pub name: String,
    /// The packages it depends on by path (any kind of dependency).
    pub path_dependencies: Vec<String>,
}

/// Checks the crate at `cargo_toml`; returns its package.
pub(super) fn check(
    cargo_toml: &Path,
    toolchain: &Toolchain,
    problems: &mut Vec<Problem>,
) -> Option<Package> {
    let text = std::fs::read_to_string(cargo_toml).unwrap_or_default();
    let metadata = match MetadataCommand::new()
        .manifest_path(cargo_toml)
        .no_deps()
        .exec()
    {
        Ok(m) => m,
        Err(e) => {
            problems.push(
                Problem::new(format!("cargo cannot read this crate: {e}"))
                    .in_file(cargo_toml)
                    .fix("run `cargo metadata --no-deps` in the crate's directory to see cargo's message"),
            );
            return None;
        }
    };
    let Some(package) = metadata
        .packages
        .iter()
        .find(|p| p.manifest_path.as_std_path() == cargo_toml)
    else {
        problems.push(
            Problem::new(
                "cargo reports no package for this Cargo.toml (is it a workspace root only?)",
            )
            .in_file(cargo_toml)
            .fix("point uri at the policy crate itself"),
        );
        return None;
    };
    if !package
        .targets
        .iter()
        .any(|t| t.kind.iter().any(|k| k.to_string() == "lib"))
    {
        problems.push(
            Problem::new(format!("{} has no library target", package.name))
                .in_file(cargo_toml)
                .fix("a policy is a library crate: add src/lib.rs (and no crate-type other than lib)"),
        );
    }
    let sdk_line = line_of(&text, |l| l.trim_start().starts_with("policy-sdk"));
    let sdk = package
        .dependencies
        .iter()
        .find(|d| d.name == "policy-sdk" && d.kind == DependencyKind::Normal);
    let version = &toolchain.sdk_version;
    let wanted = format!("{}.{}", version.major, version.minor);
    match sdk {
        None => problems.push(
            Problem::new(format!("{} does not depend on policy-sdk", package.name))
                .in_file(cargo_toml)
                .fix(format!(
                    "add `policy-sdk = \"{wanted}\"` under [dependencies]"
                )),
        ),
        Some(dep) => {
            if !dep.req.matches(version) {
                problems.push(
                    Problem::new(format!(
                        "requires policy-sdk {}, but this builder builds engines with policy-sdk {version}",
                        dep.req
                    ))
                    .in_file(cargo_toml)
                    .at_line(sdk_line)
                    .fix(format!(
                        "depend on `policy-sdk = \"{wanted}\"` and rebuild the policy against it, or use a builder whose SDK matches"
                    )),
                );
            }
            if let Some(path) = &dep.path {
                let same = path
                    .as_std_path()
                    .canonicalize()
                    .is_ok_and(|p| p == toolchain.sdk_dir);
                if !same {
                    problems.push(
                        Problem::new(format!(
                            "depends on a copy of policy-sdk at {path}; the engine is built with the one at {}",
                            toolchain.sdk_dir.display()
                        ))
                        .in_file(cargo_toml)
                        .at_line(sdk_line)
                        .fix(format!(
                            "depend on it by version (`policy-sdk = \"{wanted}\"`); the builder supplies its own copy"
                        )),
                    );
                }
            }
        }
    }
    Some(Package {
        name: package.name.to_string(),
        path_dependencies: package
            .dependencies
            .iter()
            .filter(|d| d.path.is_some())
            .map(|d| d.name.clone())
            .collect(),
    })
}
