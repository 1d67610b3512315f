//! Stage 4: compile the registry crate with cargo, mapping compiler errors back to the manifest
//! entry whose crate they come from.

use crate::report::{Failure, Problem, Stage};
use crate::validate::ValidPolicy;
use cargo_metadata::{Message, MetadataCommand, PackageId};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How to run cargo.
#[derive(Debug, Clone)]
pub struct CargoOptions {
    /// The persistent target directory.
    pub target_dir: PathBuf,
    /// Pass `--offline` (for vendored or pre-fetched sources).
    pub offline: bool,
    /// Build from these vendored sources instead of crates.io (implies `--offline`).
    pub vendor_dir: Option<PathBuf>,
    /// Let cargo's progress through to stderr.
    pub show_progress: bool,
}

impl CargoOptions {
    /// The arguments every cargo call gets: `--offline`, and the source replacement for
    /// vendored sources.
    pub fn source_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.offline || self.vendor_dir.is_some() {
            args.push("--offline".to_owned());
        }
        if let Some(dir) = &self.vendor_dir {
            args.push("--config".to_owned());
            args.push("source.crates-io.replace-with=\"vendored-sources\"".to_owned());
            args.push("--config".to_owned());
            args.push(format!(
                "source.vendored-sources.directory={}",
                toml_string(&dir.display().to_string())
            ));
        }
        args
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a generated crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// The `policy-engine` executable.
    Engine,
    /// The `policy_module` shared library.
    Module,
}

/// Compiles the crate in `dir`; returns the path of the built `artifact`.
pub fn compile(
    dir: &Path,
    policies: &[ValidPolicy],
    options: &CargoOptions,
    artifact: Artifact,
) -> Result<PathBuf, Failure> {
    let fail = |p: Problem| Failure::one(Stage::Compilation, p);
    let manifest = dir.join("Cargo.toml");
    let owners = resolve(&manifest, policies, options).map_err(fail)?;

    let mut command = Command::new(cargo());
    controlled(&mut command);
    command
        .args(["build", "--release", "--locked", "--message-format", "json"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&options.target_dir)
        .stdout(Stdio::piped())
        .stderr(if options.show_progress {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    command.args(options.source_args());
    let mut child = command
        .spawn()
        .map_err(|e| fail(Problem::new(format!("cannot run cargo: {e}"))))?;
    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    });
    let mut binary = None;
    let mut problems: Vec<Problem> = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for message in Message::parse_stream(BufReader::new(stdout)).flatten() {
            match message {
                Message::CompilerArtifact(built) => match artifact {
                    Artifact::Engine => {
                        if let Some(exe) = built.executable
                            && built.target.name == "policy-engine"
                        {
                            binary = Some(exe.into_std_path_buf());
                        }
                    }
                    Artifact::Module => {
                        if built.target.name == "policy_module"
                            && let Some(so) = built
                                .filenames
                                .into_iter()
                                .find(|f| f.extension() == Some("so"))
                        {
                            binary = Some(so.into_std_path_buf());
                        }
                    }
                },
                Message::CompilerMessage(msg)
                    if msg.message.level == cargo_metadata::diagnostic::DiagnosticLevel::Error =>
                {
                    problems.push(compile_error(&msg, owners.get(&msg.package_id)));
                }
                _ => {}
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| fail(Problem::new(format!("waiting for cargo: {e}"))))?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success()
        && let Some(binary) = binary
    {
        return Ok(binary);
    }
    if problems.is_empty() {
        problems.push(Problem::new(format!(
            "cargo build failed ({status}){}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!(":\n{}", tail(&stderr, 40))
            }
        )));
    }
    Err(Failure {
        stage: Stage::Compilation,
        problems,
    })
}

/// One compiler error as a problem: the policy it belongs to (or the engine), the file, line
/// and column of its primary span (relative paths resolved against the crate's directory).
fn compile_error(
    msg: &cargo_metadata::CompilerMessage,
    owner: Option<&(String, PathBuf)>,
) -> Problem {
    let text = msg
        .message
        .rendered
        .clone()
        .unwrap_or_else(|| msg.message.message.clone());
    let name = owner.map_or("engine", |(label, _)| label.as_str());
    let mut problem = Problem::new(format!("{name} does not compile:\n{}", text.trim_end()));
    if let Some(span) = msg.message.spans.iter().find(|s| s.is_primary) {
        let file = PathBuf::from(&span.file_name);
        let file = match owner {
            Some((_, dir)) if file.is_relative() => dir.join(file),
            _ => file,
        };
        problem = problem
            .in_file(&file)
            .at_line(span.line_start)
            .at_column(span.column_start);
    }
    match owner {
        Some((label, _)) => problem
            .for_policy(label.clone())
            .fix("fix the policy crate (`cargo check` in its directory shows the same errors)"),
        None => problem,
    }
}

/// Completes the lock file (new entries only; locked versions stay) and maps each policy
/// crate's package id to its manifest label and directory.
fn resolve(
    manifest: &Path,
    policies: &[ValidPolicy],
    options: &CargoOptions,
) -> Result<BTreeMap<PackageId, (String, PathBuf)>, Problem> {
    let mut command = MetadataCommand::new();
    command.manifest_path(manifest).cargo_path(cargo());
    command.other_options(options.source_args());
    let metadata = command.exec().map_err(|e| {
        Problem::new(format!("cargo cannot resolve the engine's dependencies: {e}"))
            .in_file(manifest)
            .fix("a policy may need a crate the lock file does not have and cargo cannot fetch; run without --offline, or vendor it (`policy-builder vendor --manifest ...`)")
    })?;
    let by_dir: BTreeMap<&Path, String> = policies
        .iter()
        .map(|p| (p.entry.dir.as_path(), p.entry.label()))
        .collect();
    Ok(metadata
        .packages
        .iter()
        .filter_map(|package| {
            let dir = package.manifest_path.parent()?.as_std_path();
            let dir = dir.canonicalize().ok()?;
            by_dir
                .get(dir.as_path())
                .map(|label| (package.id.clone(), (label.clone(), dir.clone())))
        })
        .collect())
}

/// `CARGO_*` variables that configure cargo itself (where it fetches from, how it prints, the
/// user's build and profile settings) and so reach the child cargo; every other `CARGO_*`
/// variable comes from an outer cargo (`cargo run -p policy-builder` sets the package's
/// `CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, ...) and is removed.
const CARGO_CONFIG: [&str; 8] = [
    "CARGO_HOME",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
];

/// Gives the child cargo the caller's environment minus what would change the build scripts'
/// view (and so the cache) without changing the build: an outer cargo's `CARGO_*` variables,
/// and `SOURCE_DATE_EPOCH` (it dates `build-info.json`, nothing cargo compiles).
fn controlled(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer_cargo =
            key.starts_with("CARGO") && !CARGO_CONFIG.iter().any(|kept| key.starts_with(kept));
        if outer_cargo || key == "SOURCE_DATE_EPOCH" || key == "RUSTC_WORKSPACE_WRAPPER" {
            command.env_remove(key);
        }
    }
}

/// The variables from the caller's environment that shape the build (`RUSTFLAGS` and the like,
/// and cargo's own build configuration), for the report: they are part of cargo's cache key.
pub fn build_environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(key, _)| {
            matches!(key.as_str(), "RUSTFLAGS" | "RUSTC" | "RUSTC_WRAPPER")
                || key.starts_with("CARGO_BUILD_")
                || key.starts_with("CARGO_PROFILE_")
        })
        .collect()
}

pub(crate) fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
