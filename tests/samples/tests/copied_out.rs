//! Every sample crate stands alone, as the starting point of a user's own policy: copied out of
//! the repository (its siblings beside it, for the path dependencies between samples), with
//! only the `[patch.crates-io]` for the SDK that docs/builder.md tells a user to add, cargo
//! resolves it; one of them builds and passes its tests there.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (path, name) = (entry.path(), entry.file_name());
        if name == "target" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("copied-out-samples"),
        )
        .output()
        .expect("run cargo")
}

#[test]
fn every_sample_crate_builds_when_copied_out_on_its_own() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().expect("repository");
    let out = std::env::temp_dir().join(format!("policy-samples-copied-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    copy_dir(&repo.join("sample-policies"), &out);
    let patch = format!(
        "\n[patch.crates-io]\npolicy-sdk = {{ path = \"{}\" }}\n",
        repo.join("policy-sdk").display()
    );
    let mut crates: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("samples")
        .flatten()
        .flat_map(|policy| {
            let path = policy.path();
            if path.join("Cargo.toml").is_file() {
                vec![path]
            } else {
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|v| v.path())
                    .filter(|v| v.join("Cargo.toml").is_file())
                    .collect()
            }
        })
        .collect();
    crates.sort();
    assert!(crates.len() >= 12, "{crates:?}");
    for dir in &crates {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("Cargo.toml");
        assert!(
            !text.contains("workspace"),
            "{} inherits from the repository's workspace",
            manifest.display()
        );
        std::fs::write(&manifest, text + &patch).expect("write");
        let resolved = cargo(dir, &["metadata", "--format-version", "1", "--offline"]);
        assert!(
            resolved.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&resolved.stderr)
        );
    }
    let tested = cargo(&out.join("set-header/v1.0.0"), &["test", "--offline"]);
    let stdout = String::from_utf8_lossy(&tested.stdout);
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        tested.status.success() && stdout.contains("test result: ok."),
        "{stdout}\n{}",
        String::from_utf8_lossy(&tested.stderr)
    );
}
