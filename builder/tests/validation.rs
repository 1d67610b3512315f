//! Manifests and policy crates the builder must reject, each with its stage's exit code and a
//! message naming the cause. None of these reaches the compiler, so they are fast.

mod support;

use support::{PolicyCrate, Temp, builder, manifest};

const MANIFEST: i32 = 3;
const VALIDATION: i32 = 4;

/// Runs `validate` on a manifest listing the crate written by `write`; returns the run.
fn validate_one(write: impl FnOnce(&Temp) -> String) -> support::Run {
    let temp = Temp::new("validate");
    let uri = write(&temp);
    let manifest = manifest(&temp, &[("tag", &uri)]);
    builder(&["validate", "--manifest", &manifest])
}

fn assert_fails(run: &support::Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "{run:?}");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?} in:\n{run:?}"
        );
    }
}

#[test]
fn a_valid_crate_passes() {
    let run = validate_one(|t| {
        PolicyCrate::new("acme-tag", "tag", "1.0.0").write(t, "tag");
        "./tag".into()
    });
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("ok: tag:1.0.0"), "{run:?}");
}

#[test]
fn missing_policy_definition() {
    let run = validate_one(|t| {
        let dir = PolicyCrate::new("acme-tag", "tag", "1.0.0").write(t, "tag");
        std::fs::remove_file(dir.join("policy-definition.yaml")).expect("remove");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "policy-definition.yaml is missing",
            "tag/policy-definition.yaml",
            "fix:",
        ],
    );
}

#[test]
fn definition_and_manifest_names_differ() {
    let run = validate_one(|t| {
        PolicyCrate::new("acme-tag", "tagger", "1.0.0").write(t, "tag");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "name is `tagger` but the manifest entry says `tag`",
            "policy-definition.yaml:1",
        ],
    );
}

#[test]
fn parameters_that_are_not_a_json_schema() {
    let run = validate_one(|t| {
        let dir = PolicyCrate::new("acme-tag", "tag", "1.0.0").write(t, "tag");
        let file = dir.join("policy-definition.yaml");
        let text = std::fs::read_to_string(&file).expect("read");
        std::fs::write(
            &file,
            text.replace(
                "{type: object}",
                "{type: object, properties: {a: {type: objekt}}}",
            ),
        )
        .expect("write");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "parameters is not a valid JSON Schema",
            "objekt",
            "policy-definition.yaml:5",
        ],
    );
}

#[test]
fn a_declared_phase_without_its_trait() {
    let run = validate_one(|t| {
        PolicyCrate {
            phases: &["request", "response"],
            ..PolicyCrate::new("acme-tag", "tag", "1.0.0")
        }
        .write(t, "tag");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "declares the response phase but Tag does not implement policy_sdk::ResponsePolicy",
            "src/lib.rs",
        ],
    );
}

#[test]
fn a_trait_without_its_declared_phase() {
    let run = validate_one(|t| {
        PolicyCrate {
            implements: &["request", "response"],
            ..PolicyCrate::new("acme-tag", "tag", "1.0.0")
        }
        .write(t, "tag");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "Tag implements policy_sdk::ResponsePolicy but the definition does not declare the response phase",
            "src/lib.rs:",
        ],
    );
}

#[test]
fn an_incompatible_sdk_version() {
    let run = validate_one(|t| {
        PolicyCrate {
            sdk: "\"0.2\"",
            ..PolicyCrate::new("acme-tag", "tag", "1.0.0")
        }
        .write(t, "tag");
        "./tag".into()
    });
    assert_fails(
        &run,
        VALIDATION,
        &[
            "requires policy-sdk ^0.2",
            "builds engines with policy-sdk 0.1.0",
            "Cargo.toml:8",
            "policy-sdk = \"0.1\"",
        ],
    );
}

#[test]
fn every_problem_of_every_crate_is_reported_at_once() {
    let temp = Temp::new("many");
    PolicyCrate::new("acme-a", "a-wrong", "1.0.0").write(&temp, "a");
    PolicyCrate {
        sdk: "\"0.9\"",
        ..PolicyCrate::new("acme-b", "b", "1.0.0")
    }
    .write(&temp, "b");
    let manifest = manifest(&temp, &[("a", "./a"), ("b", "./b")]);
    let run = builder(&["validate", "--manifest", &manifest]);
    assert_fails(&run, VALIDATION, &["[a] ", "[b] ", "2 problem(s)"]);
}

#[test]
fn duplicate_name_and_version_in_the_manifest() {
    let temp = Temp::new("dup");
    PolicyCrate::new("acme-tag", "tag", "1.0.0").write(&temp, "tag");
    let manifest = temp.write(
        "policy-manifest.yaml",
        "version: v1\npolicies:\n  - {name: tag, version: 1.0.0, uri: ./tag}\n  - {name: tag, version: 1.0.0, uri: ./tag}\n",
    );
    let run = builder(&["validate", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_fails(
        &run,
        MANIFEST,
        &["tag:1.0.0 is listed twice", "policy-manifest.yaml:4"],
    );
}

#[test]
fn the_same_policy_version_from_two_crates() {
    let temp = Temp::new("dup2");
    PolicyCrate::new("acme-tag", "tag", "1.0.0").write(&temp, "one");
    PolicyCrate::new("acme-tag", "tag", "1.0.0").write(&temp, "two");
    let manifest = manifest(&temp, &[("tag", "./one"), ("tag", "./two")]);
    let run = builder(&["validate", "--manifest", &manifest]);
    assert_fails(&run, VALIDATION, &["tag:1.0.0 is provided twice"]);
}

#[test]
fn manifest_mistakes_are_named_with_fixes() {
    let temp = Temp::new("typo");
    let manifest = temp.write(
        "policy-manifest.yaml",
        "version: v1\npolicies:\n  - name: tag\n    url: ./tag\n",
    );
    let run = builder(&["validate", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_fails(
        &run,
        MANIFEST,
        &[
            "policy-manifest.yaml:4: unknown key `policies[0].url`",
            "did you mean `uri`?",
            "policies[0].uri is missing",
        ],
    );

    let manifest = temp.write("empty.yaml", "version: v2\npolicies: []\n");
    let run = builder(&[
        "validate",
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(MANIFEST), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    assert_eq!(report["stage"], "manifest");
    assert_eq!(report["exitCode"], MANIFEST);
    let messages: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("version: \"v2\" is not supported")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("`policies` is empty")),
        "{messages:?}"
    );

    let run = builder(&[
        "validate",
        "--manifest",
        &temp.path("nope.yaml").display().to_string(),
    ]);
    assert_fails(&run, MANIFEST, &["nope.yaml: cannot read the manifest"]);

    let manifest = temp.write(
        "missing-crate.yaml",
        "version: v1\npolicies:\n  - {name: tag, uri: ./not-here}\n",
    );
    let run = builder(&["validate", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_fails(&run, MANIFEST, &["not-here", "does not exist"]);
}

#[test]
fn generate_is_deterministic_and_marks_its_files() {
    let temp = Temp::new("gen");
    PolicyCrate::new("acme-b", "b", "1.0.0").write(&temp, "b");
    PolicyCrate::new("acme-a", "a", "1.0.0").write(&temp, "a");
    let manifest = manifest(&temp, &[("b", "./b"), ("a", "./a")]);
    let render = |out: &str| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_policy-builder"))
            .args(["generate", "--manifest", &manifest, "--out"])
            .arg(temp.path(out))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .expect("run");
        assert!(run.status.success(), "{run:?}");
        ["Cargo.toml", "src/main.rs", "build-info.json"]
            .map(|f| std::fs::read_to_string(temp.path(out).join(f)).expect("generated file"))
    };
    let first = render("one");
    assert_eq!(first, render("two"), "same inputs, same files");
    assert!(first[0].starts_with("# @generated") && first[1].starts_with("// @generated"));
    let a = first[1]
        .find("policy_a_1_0_0::policy_export")
        .expect("a registered");
    let b = first[1]
        .find("policy_b_1_0_0::policy_export")
        .expect("b registered");
    assert!(a < b, "sorted by name:\n{}", first[1]);
    let info: serde_json::Value = serde_json::from_str(&first[2]).expect("json");
    assert_eq!(info["builtAt"], "2023-11-14T22:13:20Z");
    assert_eq!(info["policies"][0]["name"], "a");
    assert_eq!(
        info["policies"][0]["contentHash"].as_str().map(str::len),
        Some(64)
    );
}

#[test]
fn discover_finds_every_versioned_crate_and_explicit_entries_win() {
    let temp = Temp::new("discover");
    PolicyCrate::new("acme-tag", "tag", "1.0.0").write(&temp, "policies/tag/v1.0.0");
    PolicyCrate::new("acme-tag", "tag", "2.0.0").write(&temp, "policies/tag/v2.0.0");
    PolicyCrate::new("acme-stamp", "stamp", "0.3.1").write(&temp, "policies/stamp/v0.3.1");
    // Not crates of the layout: skipped.
    temp.write("policies/tag/notes/README.md", "not a crate\n");
    temp.write("policies/tag/v3/Cargo.toml", "[package]\n");
    // The manifest's own tag 2.0.0, in another directory, wins over the discovered one.
    PolicyCrate::new("acme-tag", "tag", "2.0.0").write(&temp, "pinned/tag2");
    let manifest = temp.write(
        "policy-manifest.yaml",
        "version: v1\npolicies:\n  - discover: ./policies\n  - {name: tag, version: 2.0.0, uri: ./pinned/tag2}\n",
    );
    let run = builder(&[
        "validate",
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        report["policies"],
        serde_json::json!(["tag:2.0.0", "stamp:0.3.1", "tag:1.0.0"])
    );
    assert_eq!(
        report["discovered"],
        serde_json::json!([
            {"name": "stamp", "version": "0.3.1", "uri": "./policies/stamp/v0.3.1", "from": "./policies"},
            {"name": "tag", "version": "1.0.0", "uri": "./policies/tag/v1.0.0", "from": "./policies"},
        ])
    );

    let empty = temp.write(
        "empty-manifest.yaml",
        "version: v1\npolicies:\n  - discover: ./pinned\n",
    );
    let run = builder(&["validate", "--manifest", empty.to_str().expect("utf-8")]);
    assert_fails(
        &run,
        MANIFEST,
        &[
            "empty-manifest.yaml:3",
            "discover \"./pinned\" holds no policy crate",
        ],
    );
}

/// The README's builder-image example: the repository mounted as the workspace, the engine's
/// own source elsewhere (`/opt/policy-engine` in the image). The samples depend on the SDK by
/// version, so they take the engine's copy instead of counting as a second one.
#[test]
fn the_sample_manifest_validates_against_an_engine_source_elsewhere() {
    let temp = Temp::new("engine-source");
    let repo = support::repo();
    let files = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&repo)
        .output()
        .expect("git ls-files");
    assert!(files.status.success(), "{files:?}");
    for file in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = String::from_utf8_lossy(file);
        let to = temp.path(&format!("engine/{file}"));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(repo.join(&*file), &to).expect("copy");
    }
    let manifest = repo.join("policy-manifest.yaml");
    let engine = temp.path("engine");
    let run = builder(&[
        "validate",
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--engine-source",
        engine.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("validation  ok: "), "{run:?}");

    // With features pinned, as in the image: the engine's copies of the samples the manifest
    // lists (and of what they depend on by path) are not pinned beside the workspace's.
    let out = temp.path("generated");
    let run = builder(&[
        "generate",
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--engine-source",
        engine.to_str().expect("utf-8"),
        "--pin-features",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let resolved = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(out.join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
}
