//! Stage 2: check every policy crate the manifest lists, collecting every problem before stopping.

mod cargo;
mod source;

use crate::manifest::{Entry, hex};
use crate::report::{Failure, Problem, Stage, line_of};
use policy_definition::{DefinitionError, Phase, PolicyDefinition};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What validation checks against: the SDK this builder builds engines with.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The SDK's version.
    pub sdk_version: cargo_metadata::semver::Version,
    /// The SDK's source directory (canonical).
    pub sdk_dir: PathBuf,
}

/// A policy crate that passed every check.
#[derive(Debug, Clone)]
pub struct ValidPolicy {
    /// The manifest entry.
    pub entry: Entry,
    /// Its definition.
    pub definition: PolicyDefinition,
    /// Its Cargo package name.
    pub package: String,
    /// The packages it depends on by path (`--pin-features` leaves the engine's copies of those
    /// out, or cargo would see two packages of one name).
    pub path_dependencies: Vec<String>,
    /// SHA-256 over the crate's files (sorted paths and contents; `target/` and hidden files
    /// left out), hex.
    pub content_hash: String,
}

impl ValidPolicy {
    /// `name:version` from the definition.
    pub fn key(&self) -> String {
        self.definition.key()
    }
}

/// Checks every entry; all problems of all crates are reported together.
pub fn validate(entries: &[Entry], toolchain: &Toolchain) -> Result<Vec<ValidPolicy>, Failure> {
    let mut problems = Vec::new();
    let mut valid = Vec::new();
    for entry in entries {
        match check(entry, toolchain) {
            Ok(policy) => valid.push(policy),
            Err(found) => problems.extend(found.into_iter().map(|p| p.for_policy(entry.label()))),
        }
    }
    let mut keys: BTreeMap<String, &ValidPolicy> = BTreeMap::new();
    for policy in &valid {
        if let Some(first) = keys.insert(policy.key(), policy) {
            problems.push(
                Problem::new(format!(
                    "{} is provided twice: by {} and by {}",
                    policy.key(),
                    first.entry.dir.display(),
                    policy.entry.dir.display()
                ))
                .fix("list each name:version once in the manifest"),
            );
        }
    }
    if problems.is_empty() {
        Ok(valid)
    } else {
        Err(Failure {
            stage: Stage::Validation,
            problems,
        })
    }
}

fn check(entry: &Entry, toolchain: &Toolchain) -> Result<ValidPolicy, Vec<Problem>> {
    let dir = &entry.dir;
    let mut problems = Vec::new();
    let definition_file = dir.join("policy-definition.yaml");
    let cargo_toml = dir.join("Cargo.toml");
    let lib_rs = dir.join("src/lib.rs");
    for (file, fix) in [
        (
            &definition_file,
            "add policy-definition.yaml (name, version, description, phases, parameters) beside Cargo.toml",
        ),
        (&cargo_toml, "the uri must name a Rust crate's directory"),
        (
            &lib_rs,
            "a policy is a library crate: add src/lib.rs that calls policy_sdk::export_policy!",
        ),
    ] {
        if !file.is_file() {
            problems.push(
                Problem::new(format!(
                    "{} is missing",
                    file.file_name().unwrap_or_default().to_string_lossy()
                ))
                .in_file(file)
                .fix(fix),
            );
        }
    }
    let definition = definition_file
        .is_file()
        .then(|| check_definition(&definition_file, entry, &mut problems))
        .flatten();
    let package = cargo_toml
        .is_file()
        .then(|| cargo::check(&cargo_toml, toolchain, &mut problems))
        .flatten();
    if let (true, Some(definition)) = (lib_rs.is_file(), &definition) {
        source::check(&lib_rs, &definition_file, &definition.phases, &mut problems);
    }
    match (definition, package) {
        (Some(definition), Some(package)) if problems.is_empty() => Ok(ValidPolicy {
            entry: entry.clone(),
            definition,
            package: package.name,
            path_dependencies: package.path_dependencies,
            content_hash: content_hash(dir).map_err(|e| {
                vec![Problem::new(format!("cannot read the crate's files: {e}")).in_file(dir)]
            })?,
        }),
        _ => Err(problems),
    }
}

fn check_definition(
    file: &Path,
    entry: &Entry,
    problems: &mut Vec<Problem>,
) -> Option<PolicyDefinition> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(format!("cannot read it: {e}")).in_file(file));
            return None;
        }
    };
    let schema_fix = "see definition/schema/policy-definition.schema.json for the format";
    let definition = match PolicyDefinition::from_yaml(&text) {
        Ok(d) => d,
        Err(DefinitionError::Invalid(found)) => {
            for message in found {
                let field = message.split(':').next().unwrap_or_default().to_owned();
                let top = field
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                problems.push(
                    Problem::new(message)
                        .in_file(file)
                        .at_line(line_of(&text, |l| {
                            !top.is_empty() && l.starts_with(&format!("{top}:"))
                        }))
                        .fix(schema_fix),
                );
            }
            return None;
        }
        Err(e) => {
            problems.push(Problem::new(e.to_string()).in_file(file).fix(schema_fix));
            return None;
        }
    };
    if let Err(e) = definition.params_schema() {
        problems.push(
            Problem::new(e.to_string())
                .in_file(file)
                .at_line(line_of(&text, |l| l.starts_with("parameters:")))
                .fix(
                    "`parameters` must be a JSON Schema (draft 2020-12) for the route-level params",
                ),
        );
    }
    if definition.name != entry.name {
        problems.push(
            Problem::new(format!(
                "the definition's name is `{}` but the manifest entry says `{}`",
                definition.name, entry.name
            ))
            .in_file(file)
            .at_line(line_of(&text, |l| l.starts_with("name:")))
            .fix(format!(
                "make them equal: `name: {}` in the manifest, or rename the policy in its definition",
                definition.name
            )),
        );
    }
    if let Some(version) = &entry.version
        && *version != definition.version
    {
        problems.push(
            Problem::new(format!(
                "the definition's version is {} but the manifest entry asks for {version}",
                definition.version
            ))
            .in_file(file)
            .at_line(line_of(&text, |l| l.starts_with("version:")))
            .fix(
                "point uri at the crate of the version you want, or change the manifest's version",
            ),
        );
    }
    Some(definition)
}

/// SHA-256 over the crate's files: each relative path and content, in sorted path order.
fn content_hash(dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !(e.file_name().to_string_lossy().starts_with('.') || e.file_name() == "target")
        });
    for item in walk {
        let item = item.map_err(std::io::Error::other)?;
        if item.file_type().is_file() {
            files.push(item.into_path());
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file)?);
        hasher.update([0]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The phase's SDK trait.
fn trait_of(phase: Phase) -> &'static str {
    match phase {
        Phase::Request => "RequestPolicy",
        Phase::Response => "ResponsePolicy",
    }
}
