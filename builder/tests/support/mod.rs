//! Policy crates written to temporary directories, and the builder run as a process.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A temporary directory, removed on drop.
pub struct Temp(pub PathBuf);

impl Temp {
    pub fn new(label: &str) -> Temp {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "policy-builder-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Temp(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    /// Writes `text` to `relative`, creating directories.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A policy crate to write.
pub struct PolicyCrate<'a> {
    pub package: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    /// Phases the definition (and export_policy!) declare.
    pub phases: &'a [&'a str],
    /// Phases the type implements.
    pub implements: &'a [&'a str],
    /// The policy-sdk dependency as written in Cargo.toml.
    pub sdk: &'a str,
    /// Extra Rust code appended to src/lib.rs.
    pub extra: &'a str,
}

impl<'a> PolicyCrate<'a> {
    /// A request-phase policy that sets `x-tag: <name>-<version>`.
    pub fn new(package: &'a str, name: &'a str, version: &'a str) -> Self {
        PolicyCrate {
            package,
            name,
            version,
            phases: &["request"],
            implements: &["request"],
            sdk: "\"0.1\"",
            extra: "",
        }
    }

    /// Writes the crate under `temp` at `dir`; returns its path.
    pub fn write(&self, temp: &Temp, dir: &str) -> PathBuf {
        let phases = self.phases.join(", ");
        temp.write(
            &format!("{dir}/Cargo.toml"),
            &format!(
                "[package]\nname = \"{}\"\nversion = \"{}\"\nedition = \"2021\"\npublish = false\n\n\
                 [dependencies]\npolicy-sdk = {}\nserde_json = \"1\"\n",
                self.package, self.version, self.sdk
            ),
        );
        temp.write(
            &format!("{dir}/policy-definition.yaml"),
            &format!(
                "name: {}\nversion: {}\ndescription: A test policy.\nphases: [{phases}]\nparameters: {{type: object}}\n",
                self.name, self.version
            ),
        );
        let mut lib = String::from(
            "use policy_sdk::{Outcome, Policy, PolicyError};\n\n\
             pub struct Tag;\n\n\
             impl Policy for Tag {\n    type Params = serde_json::Value;\n    \
             fn new(_: Self::Params) -> Result<Self, PolicyError> {\n        Ok(Tag)\n    }\n}\n",
        );
        if self.implements.contains(&"request") {
            lib.push_str(&format!(
                "\nimpl policy_sdk::RequestPolicy for Tag {{\n    \
                 fn on_request<'a>(&'a self, _: &'a mut policy_sdk::RequestContext) -> Outcome<'a, policy_sdk::RequestAction> {{\n        \
                 Outcome::ready(policy_sdk::UpstreamRequestMods::new().set_header(\"x-tag\", \"{}-{}\"))\n    }}\n}}\n",
                self.name, self.version
            ));
        }
        if self.implements.contains(&"response") {
            lib.push_str(
                "\nimpl policy_sdk::ResponsePolicy for Tag {\n    \
                 fn on_response<'a>(&'a self, _: &'a mut policy_sdk::ResponseContext) -> Outcome<'a, policy_sdk::ResponseAction> {\n        \
                 Outcome::ready(policy_sdk::ResponseAction::pass())\n    }\n}\n",
            );
        }
        lib.push_str(self.extra);
        lib.push_str(&format!(
            "\npolicy_sdk::export_policy!(Tag, phases = [{phases}]);\n"
        ));
        temp.write(&format!("{dir}/src/lib.rs"), &lib);
        temp.path(dir)
    }
}

/// The result of one builder run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The builder image's layout, laid out natively: every locked crate vendored, a `CARGO_HOME`
/// that reaches no registry, and a target directory warmed by building the sample manifest in
/// release (`scripts/prepare-builder.sh PREFIX vendor warm`). Every test that really builds
/// shares it, as users of the image do: the engine's dependencies compile once per machine.
pub struct Layout {
    /// The prefix the script prepared.
    pub prefix: PathBuf,
}

impl Layout {
    /// The offline `CARGO_HOME` (its config points cargo at the vendored crates).
    pub fn cargo_home(&self) -> PathBuf {
        self.prefix.join("cargo-home")
    }

    /// The vendored crates.
    pub fn vendor(&self) -> PathBuf {
        self.prefix.join("vendor")
    }

    /// The warm target directory.
    pub fn target(&self) -> PathBuf {
        self.prefix.join("target")
    }

    /// `policy-builder args...` (this build of it) as in the image: offline, from the vendored
    /// crates, into the warm target directory, features pinned.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_policy-builder"));
        command
            .args(args)
            .env_remove("CARGO_TARGET_DIR")
            .env("CARGO_HOME", self.cargo_home())
            .env("CARGO_NET_OFFLINE", "true")
            .env("POLICY_BUILDER_VENDOR_DIR", self.vendor())
            .env("POLICY_BUILDER_TARGET_DIR", self.target())
            .env("POLICY_BUILDER_PIN_FEATURES", "true");
        command
    }

    /// Runs [`Layout::command`].
    pub fn builder(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run policy-builder"))
    }
}

/// The shared [`Layout`], prepared by the first test of a run that needs it (the others wait
/// for it on a file lock, `flock(1)`, across test processes) and brought up to date once per run.
pub fn layout() -> &'static Layout {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("builder-layout");
        std::fs::create_dir_all(&prefix).expect("layout dir");
        // One preparation per run: nextest names its runs; under cargo test every test
        // binary of a run has the same parent.
        let run = std::env::var("NEXTEST_RUN_ID")
            .unwrap_or_else(|_| format!("parent {}", std::os::unix::process::parent_id()));
        let once = r#"set -e
if [ "$(cat "$1/.prepared" 2>/dev/null)" = "$2" ]; then exit 0; fi
"$3" "$1" vendor warm
printf %s "$2" >"$1/.prepared""#;
        let started = std::time::Instant::now();
        let prepare = Command::new("flock")
            .arg(prefix.join(".lock"))
            .args(["sh", "-c", once, "prepare"])
            .arg(&prefix)
            .arg(&run)
            .arg(repo().join("scripts/prepare-builder.sh"))
            .env_remove("CARGO_TARGET_DIR")
            .env("POLICY_BUILDER_BIN", env!("CARGO_BIN_EXE_policy-builder"))
            .output()
            .expect("run flock prepare-builder.sh");
        assert!(prepare.status.success(), "{prepare:?}");
        eprintln!(
            "the builder layout (scripts/prepare-builder.sh vendor warm, once per run): {:.1?}",
            started.elapsed()
        );
        Layout { prefix }
    })
}

/// A target directory for commands that never compile (validation).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("builder-target")
}

/// Runs `policy-builder args...` for the commands that never compile.
pub fn builder(args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_policy-builder"))
        .args(args)
        .arg("--target-dir")
        .arg(target_dir())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run policy-builder");
    Run::from(out)
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Writes a manifest listing `entries` (`(name, uri)`; `("discover", dir)` for a discover entry)
/// and returns its path.
pub fn manifest(temp: &Temp, entries: &[(&str, &str)]) -> String {
    let mut text = String::from("version: v1\npolicies:\n");
    for (name, uri) in entries {
        if *name == "discover" {
            text.push_str(&format!("  - discover: {uri}\n"));
        } else {
            text.push_str(&format!("  - name: {name}\n    uri: {uri}\n"));
        }
    }
    temp.write("policy-manifest.yaml", &text)
        .display()
        .to_string()
}
