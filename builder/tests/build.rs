//! The builder really building engines and modules, in release, as in the builder image: offline
//! from the vendored crates, into the target directory `support::layout()` warmed (the first run
//! on a machine takes minutes; later ones reuse it).

use policy_test_support::envoy as e2e;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::{PolicyCrate, Temp, builder, layout, manifest};

#[test]
fn two_versions_of_one_policy_and_crates_outside_the_repo_build_in() {
    let temp = Temp::new("build");
    // Two versions of one policy, in crates of the same package name, outside the repository:
    // v1 depends on the SDK by version (the builder supplies its copy), v2 by path.
    // Both are found by the manifest's `discover:` entry.
    PolicyCrate::new("acme-tag", "tag", "1.0.0").write(&temp, "policies/tag/v1.0.0");
    let sdk_path = format!(
        "{{ path = \"{}/../policy-sdk\" }}",
        env!("CARGO_MANIFEST_DIR")
    );
    PolicyCrate {
        sdk: &sdk_path,
        phases: &["request", "response"],
        implements: &["request", "response"],
        ..PolicyCrate::new("acme-tag", "tag", "2.0.0")
    }
    .write(&temp, "policies/tag/v2.0.0");
    // A crate from `policy-builder new`: it tests on its own, offline, and builds in.
    let hello = temp.path("hello/v0.1.0");
    let run = builder(&[
        "new",
        "hello",
        "--phases",
        "request,response",
        "--dir",
        hello.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .contains("  - name: hello\n    version: 0.1.0\n    uri: "),
        "the manifest entry to add: {run:?}"
    );
    let tested = Command::new(env!("CARGO"))
        .args(["test", "--offline"])
        .current_dir(&hello)
        .env(
            "CARGO_TARGET_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"),
        )
        .output()
        .expect("run cargo test");
    let stdout = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success() && stdout.contains("test result: ok. 3 passed"),
        "cargo test in the new crate:\n{stdout}\n{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    let again = builder(&["new", "hello", "--dir", hello.to_str().expect("utf-8")]);
    assert_eq!(
        again.code,
        Some(1),
        "never over an existing crate: {again:?}"
    );
    assert!(again.stderr.contains("already holds files"), "{again:?}");
    let bad = builder(&["new", "Hello_World"]);
    assert_eq!(bad.code, Some(2), "a command-line error: {bad:?}");
    assert!(bad.stderr.contains("is not a policy name"), "{bad:?}");
    let set_header = format!(
        "file://{}/../sample-policies/set-header/v1.0.0",
        env!("CARGO_MANIFEST_DIR")
    );
    let manifest = manifest(
        &temp,
        &[
            ("discover", "./policies"),
            ("set-header", &set_header),
            ("hello", "./hello/v0.1.0"),
        ],
    );
    let out = temp.path("dist");
    let run = layout().builder(&[
        "--manifest",
        &manifest,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");

    let engine = out.join("policy-engine");
    assert_eq!(
        registered(&engine),
        ["hello:0.1.0", "set-header:1.0.0", "tag:1.0.0", "tag:2.0.0"]
    );

    let info = Command::new(&engine)
        .arg("build-info")
        .output()
        .expect("run");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("JSON");
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("build-info.json")).expect("build-info.json"),
    )
    .expect("JSON");
    assert_eq!(info, written, "the binary embeds what build-info.json says");
    assert_eq!(info["policies"][2]["version"], "1.0.0");
    assert_eq!(info["policies"][2]["discoveredFrom"], "./policies");
    assert_eq!(info["policies"][2]["uri"], "./policies/tag/v1.0.0");
    assert_eq!(
        info["policies"][1].get("discoveredFrom"),
        None,
        "set-header is listed"
    );
    assert_eq!(
        info["policies"][3]["phases"],
        serde_json::json!(["request", "response"])
    );
    assert_eq!(info["manifestSha256"].as_str().map(str::len), Some(64));

    let dockerfile = std::fs::read_to_string(out.join("Dockerfile")).expect("Dockerfile");
    for needle in [
        "# @generated",
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "USER 65532:65532",
        "EXPOSE 9001",
        "HEALTHCHECK",
        "CMD [\"/usr/local/bin/policy-engine\", \"healthcheck\"]",
        "CMD [\"serve\", \"--config\", \"/etc/policy-engine/routes.yaml\"]",
        "org.opencontainers.image.version=",
        "io.policy-engine.policies=\"hello:0.1.0,set-header:1.0.0,tag:1.0.0,tag:2.0.0\"",
    ] {
        assert!(dockerfile.contains(needle), "{needle:?} in:\n{dockerfile}");
    }

    // Both versions are usable in one route configuration, and the engine serves.
    let config = temp.write(
        "routes.yaml",
        "version: v1\nroutes:\n  - route: old\n    policies: [{name: tag, version: 1.0.0}]\n  - route: new\n    policies: [{name: tag, version: 2.0.0}, {name: hello, version: 0.1.0, params: {value: hi}}]\n",
    );
    let valid = Command::new(&engine)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("run");
    assert!(valid.status.success(), "{valid:?}");
    let mut serving = Command::new(&engine)
        .args([
            "--admin-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the engine");
    let mut line = String::new();
    BufReader::new(serving.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let address = line
        .trim()
        .strip_prefix("policy-engine listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let health = Command::new(&engine)
        .args(["healthcheck", "--listen", &address])
        .status()
        .expect("run");
    let _ = serving.kill();
    let _ = serving.wait();
    assert!(
        health.success(),
        "the built engine accepts connections at {address}"
    );
}

#[test]
fn a_compile_error_names_the_policy() {
    let temp = Temp::new("broken");
    PolicyCrate {
        extra: "\npub fn broken() -> u32 { undefined_thing }\n",
        ..PolicyCrate::new("acme-broken", "broken", "1.0.0")
    }
    .write(&temp, "broken");
    PolicyCrate::new("acme-fine", "fine", "1.0.0").write(&temp, "fine");
    let manifest = manifest(&temp, &[("fine", "./fine"), ("broken", "./broken")]);
    let out = temp.path("dist");
    let run = layout().builder(&[
        "--manifest",
        &manifest,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(6), "{run:?}");
    assert!(
        run.stderr.contains("[broken] ")
            && run
                .stderr
                .contains("broken/src/lib.rs:18:26: broken does not compile"),
        "{run:?}"
    );
    assert!(run.stderr.contains("undefined_thing"), "{run:?}");
    assert!(!run.stderr.contains("[fine]"), "{run:?}");
    assert!(!out.join("policy-engine").exists(), "nothing is packaged");

    // The JSON report points at the policy's own file, line and column.
    let run = layout().builder(&[
        "--manifest",
        &manifest,
        "--out",
        out.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(6), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let problem = &report["problems"][0];
    let lib = temp.path("broken/src/lib.rs");
    let line = std::fs::read_to_string(&lib)
        .expect("lib.rs")
        .lines()
        .position(|l| l.contains("undefined_thing"))
        .map(|i| i + 1);
    assert_eq!(problem["stage"], "compilation", "{report:#}");
    assert_eq!(problem["policy"], "broken", "{report:#}");
    assert_eq!(
        problem["file"].as_str().map(std::path::Path::new),
        Some(lib.canonicalize().expect("canonical").as_path()),
        "{report:#}"
    );
    assert_eq!(
        problem["line"].as_u64(),
        line.map(|l| l as u64),
        "{report:#}"
    );
    assert_eq!(problem["column"], 26, "{report:#}");
}

#[test]
fn the_sample_manifest_builds_with_every_sample_policy() {
    let temp = Temp::new("samples");
    let out = temp.path("dist");
    let manifest = format!("{}/../policy-manifest.yaml", env!("CARGO_MANIFEST_DIR"));
    let run = layout().builder(&[
        "--manifest",
        &manifest,
        "--out",
        out.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON report");
    let mut expected: Vec<String> =
        std::fs::read_dir(format!("{}/../sample-policies", env!("CARGO_MANIFEST_DIR")))
            .expect("sample-policies")
            .flatten()
            .filter(|e| e.path().is_dir())
            .flat_map(|policy| {
                let name = policy.file_name().to_string_lossy().into_owned();
                std::fs::read_dir(policy.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(move |v| {
                        let version = v
                            .file_name()
                            .to_string_lossy()
                            .strip_prefix('v')?
                            .to_owned();
                        Some(format!("{name}:{version}"))
                    })
            })
            .collect();
    expected.sort();
    let mut built: Vec<String> = report["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    built.sort();
    assert_eq!(
        built, expected,
        "policy-manifest.yaml lists every sample policy crate"
    );
    let engine = out.join("policy-engine");
    assert_eq!(registered(&engine), expected);

    // The release profile keeps the engine small (docs/benchmarks.md, "Engine size": 21.9 MB
    // before, with symbols stripped by hand).
    let image = std::fs::read(&engine).expect("engine");
    assert!(
        !has_symbol_table(&image),
        "the engine's symbols are stripped"
    );
    assert!(
        image.len() < 18_000_000,
        "the sample engine is {} bytes; the budget is 18 MB",
        image.len()
    );
}

/// Whether an ELF64 little-endian file has a symbol table section (`SHT_SYMTAB`).
fn has_symbol_table(elf: &[u8]) -> bool {
    let read = |at: usize, len: usize| -> usize {
        elf[at..at + len]
            .iter()
            .rev()
            .fold(0, |n, byte| n << 8 | usize::from(*byte))
    };
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "an ELF64 little-endian file");
    let (offset, size, count) = (read(0x28, 8), read(0x3a, 2), read(0x3c, 2));
    (0..count).any(|i| read(offset + i * size + 4, 4) == 2)
}

/// The sorted `name:version` keys a built engine's `policies` subcommand lists.
fn registered(engine: &std::path::Path) -> Vec<String> {
    let policies = Command::new(engine).arg("policies").output().expect("run");
    assert!(policies.status.success(), "{policies:?}");
    e2e::policy_keys(&serde_json::from_slice(&policies.stdout).expect("JSON"))
}

/// The sample manifest as an Envoy module: built for one Envoy (`--target envoy-module`) or
/// beside the engine (`--target both`), loaded by that Envoy, serving a sample policy.
fn module_serves_through_envoy(target: &str, envoy: &str, abi: e2e::module::Abi) {
    let temp = Temp::new("module");
    let out = temp.path("dist");
    let manifest = format!("{}/../policy-manifest.yaml", env!("CARGO_MANIFEST_DIR"));
    let run = layout().builder(&[
        "--manifest",
        &manifest,
        "--out",
        out.to_str().expect("utf-8"),
        "--target",
        target,
        "--envoy",
        envoy,
        "--format",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON report");
    assert_eq!(report["module"]["envoy"], envoy, "{report:#}");
    let library = out.join("libpolicy_module.so");
    for file in ["envoy-module.yaml", "build-info.json"] {
        assert!(out.join(file).is_file(), "{file} in {}", out.display());
    }
    assert_eq!(out.join("policy-engine").exists(), target == "both");
    let snippet = std::fs::read_to_string(out.join("envoy-module.yaml")).expect("snippet");
    assert!(snippet.contains("name: policy_module"), "{snippet}");

    let routes = "version: v1\nroutes:\n  - route: public\n    policies:\n      - {name: set-header, version: 1.0.0, params: {response: {set: {x-built: module}}}}\n";
    let scratch = e2e::Scratch::new();
    std::fs::write(scratch.path("routes.yaml"), routes).expect("routes");
    let config = format!("configFile: {}", scratch.path("routes.yaml").display());
    let stack = e2e::module::ModuleStack::try_start_library(abi, scratch, &config, &library)
        .unwrap_or_else(|log| panic!("Envoy {envoy} did not load the module:\n{log}"));
    let reply = stack.send(e2e::Request::get("/public/x"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-built"), Some("module"));
    let logs = stack.wait_for_log("policy module loaded", std::time::Duration::from_secs(5));
    let sha = report["manifestSha256"].as_str().expect("sha");
    assert!(
        logs.contains(sha),
        "the module logs its build information:\n{logs}"
    );
}

#[test]
fn the_sample_manifest_builds_as_a_module_that_envoy_1_36_runs() {
    module_serves_through_envoy("envoy-module", "1.36", e2e::module::Abi::V1_36);
}

#[test]
fn the_sample_manifest_builds_as_engine_and_module_for_envoy_1_40() {
    module_serves_through_envoy("both", "1.40", e2e::module::Abi::V1_40);
}

/// What cargo compiled in a builder run with progress on stderr.
fn compiled(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .collect()
}

#[test]
fn warm_builds_stay_warm_whatever_the_caller_set() {
    let temp = Temp::new("warm");
    let manifest = format!("{}/../policy-manifest.yaml", env!("CARGO_MANIFEST_DIR"));
    let build = |out: &str, env: &[(&str, &str)]| {
        let out = temp.path(out);
        let run = layout()
            .command(&["--manifest", &manifest, "--out"])
            .arg(&out)
            .envs(env.iter().copied())
            .output()
            .expect("run policy-builder");
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{stderr}");
        (out, stderr)
    };
    // As `cargo run -p policy-builder` would call it: an outer cargo's variables, which build
    // scripts can watch (this test process has its own set from nextest, too).
    build(
        "first",
        &[
            ("CARGO_PKG_NAME", "policy-builder"),
            ("CARGO_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR")),
            ("CARGO_PRIMARY_PACKAGE", "1"),
        ],
    );
    // The binary run directly, then with a new SOURCE_DATE_EPOCH: only the registry crate
    // compiles (its path is new with every output directory).
    for (name, epoch) in [("second", None), ("third", Some("1234567890"))] {
        let mut env: Vec<(&str, &str)> = vec![
            ("CARGO_PKG_NAME", ""),
            ("CARGO_MANIFEST_DIR", "/nowhere"),
            ("CARGO_PRIMARY_PACKAGE", ""),
        ];
        if let Some(epoch) = epoch {
            env.push(("SOURCE_DATE_EPOCH", epoch));
        }
        let (out, stderr) = build(name, &env);
        let compiled = compiled(&stderr);
        assert!(
            compiled.len() == 1 && compiled[0].starts_with("policy-engine "),
            "{name}: only the registry crate compiles: {compiled:?}\n{stderr}"
        );
        if epoch.is_some() {
            let info: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("build-info.json")).expect("build-info"),
            )
            .expect("JSON");
            assert_eq!(
                info["builtAt"], "2009-02-13T23:31:30Z",
                "the epoch dates the build"
            );
        }
    }
}
