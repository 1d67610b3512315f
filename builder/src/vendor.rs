//! `policy-builder vendor`: every crate a build needs, copied into one directory, so builds
//! run where no registry is reachable (the builder image, air-gapped CI) with `--vendor-dir`.

use crate::compile::cargo;
use crate::manifest;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// Vendors the engine workspace's dependencies (the core and its hosts, the builder's generated crate and
/// the sample policies) and, given a manifest, those of its policy crates outside the workspace.
pub fn vendor(engine_dir: &Path, manifest: Option<&Path>, out: &Path) -> anyhow::Result<Value> {
    let mut extra = Vec::new();
    if let Some(path) = manifest {
        for entry in manifest::load(path)?.policies {
            let toml = entry.dir.join("Cargo.toml");
            if !entry.dir.starts_with(engine_dir) {
                extra.push(toml);
            }
        }
    }
    let mut command = Command::new(cargo());
    command
        .args(["vendor", "--versioned-dirs", "--quiet"])
        .arg("--manifest-path")
        .arg(engine_dir.join("Cargo.toml"));
    if extra.is_empty() {
        // The engine's lock file is what every build starts from: vendor exactly it.
        command.arg("--locked");
    }
    for toml in &extra {
        command.arg("--sync").arg(toml);
    }
    command.arg(out).stdout(std::process::Stdio::null());
    let status = command.status().context("running cargo vendor")?;
    if !status.success() {
        bail!(
            "cargo vendor failed ({status}); it needs the registry reachable once, on this machine"
        );
    }
    let crates = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    eprintln!(
        "vendored {crates} crates into {}; build offline with --vendor-dir {} (or POLICY_BUILDER_VENDOR_DIR)",
        out.display(),
        out.display()
    );
    Ok(json!({"vendorDir": out, "crates": crates}))
}
