//! Stage 1: `policy-manifest.yaml`: which policy crates go into the engine.
//!
//! ```yaml
//! version: v1
//! policies:
//!   - name: set-header                          # must equal the definition's name
//!     version: 1.0.0                            # optional; must equal the definition's version
//!     uri: ./sample-policies/set-header/v1.0.0  # relative to this file, absolute, or file://
//!   - discover: ./policies                      # every <name>/v<version>/ crate under it
//! ```

use crate::report::{Failure, Problem, Stage, line_of};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest manifest the builder reads.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A checked manifest.
#[derive(Debug)]
pub struct Manifest {
    /// The file, as given.
    pub path: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// The entries, in the order written.
    pub policies: Vec<Entry>,
}

/// One policy entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `name` as written.
    pub name: String,
    /// `version` as written, if any.
    pub version: Option<String>,
    /// `uri` as written.
    pub uri: String,
    /// The crate directory `uri` resolves to (canonical).
    pub dir: PathBuf,
    /// The `discover:` directory (as written) this entry was found under; `None` for an entry
    /// the manifest lists itself.
    pub discovered_from: Option<String>,
}

impl Entry {
    /// `name` or `name:version`, for messages.
    pub fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("{}:{v}", self.name),
            None => self.name.clone(),
        }
    }
}

const TOP_KEYS: [&str; 2] = ["version", "policies"];
const ENTRY_KEYS: [&str; 3] = ["name", "version", "uri"];
/// The most crates one `discover:` directory may yield.
const MAX_DISCOVERED: usize = 1000;

/// Reads and checks the manifest at `path`, reporting every problem at once.
pub fn load(path: &Path) -> Result<Manifest, Failure> {
    let fail = |p: Problem| Failure::one(Stage::Manifest, p.in_file(path));
    let size = std::fs::metadata(path)
        .map_err(|e| {
            fail(
                Problem::new(format!("cannot read the manifest: {e}"))
                    .fix("pass the path of an existing policy-manifest.yaml with --manifest"),
            )
        })?
        .len();
    if size > MAX_MANIFEST_BYTES {
        return Err(fail(Problem::new(format!(
            "the manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}"
        ))));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| fail(Problem::new(format!("cannot read the manifest: {e}"))))?;
    parse(&bytes, path)
}

/// Checks manifest `bytes` as if read from `path` (relative uris resolve from its directory).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, Failure> {
    let fail = |p: Problem| Failure::one(Stage::Manifest, p.in_file(path));
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(fail(Problem::new(format!(
            "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
            bytes.len()
        ))));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| fail(Problem::new("the manifest is not UTF-8 text")))?;
    let doc: Value = serde_saphyr::from_str(text)
        .map_err(|e| fail(Problem::new(format!("not valid YAML: {e}"))))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let policies = check(&doc, text, base, &mut problems);
    if !problems.is_empty() {
        for p in &mut problems {
            p.file = Some(path.to_path_buf());
        }
        return Err(Failure {
            stage: Stage::Manifest,
            problems,
        });
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        sha256: hex(&Sha256::digest(bytes)),
        policies,
    })
}

fn check(doc: &Value, text: &str, base: &Path, problems: &mut Vec<Problem>) -> Vec<Entry> {
    let Some(top) = doc.as_object() else {
        problems.push(
            Problem::new("the manifest must be a mapping with `version` and `policies`").fix(
                "start from `version: v1` and a `policies:` list of entries with `name` and `uri`",
            ),
        );
        return Vec::new();
    };
    unknown_keys(top, &TOP_KEYS, "", text, problems);
    match top.get("version") {
        Some(Value::String(v)) if v == "v1" => {}
        Some(other) => problems.push(
            Problem::new(format!(
                "version: {other} is not supported; this builder reads version v1"
            ))
            .at_line(line_of(text, |l| l.starts_with("version:")))
            .fix("write `version: v1`"),
        ),
        None => problems.push(Problem::new("`version` is missing").fix("add `version: v1`")),
    }
    let entries = match top.get("policies") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) | Some(Value::Null) => {
            problems.push(
                Problem::new("`policies` is empty: an engine needs at least one policy")
                    .fix("list the policy crates to build in, each with `name` and `uri`"),
            );
            return Vec::new();
        }
        Some(_) => {
            problems.push(Problem::new(
                "`policies` must be a list of entries with `name` and `uri`",
            ));
            return Vec::new();
        }
        None => {
            problems.push(
                Problem::new("`policies` is missing")
                    .fix("add `policies:` with one entry per policy crate (`name`, `uri`)"),
            );
            return Vec::new();
        }
    };
    let entry_lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- "))
        .map(|(i, _)| i + 1)
        .collect();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut discover_dirs = Vec::new();
    for (i, item) in entries.iter().enumerate() {
        let at = format!("policies[{i}]");
        let line = entry_lines.get(i).copied();
        let Some(entry) = item.as_object() else {
            problems.push(
                Problem::new(format!("{at} must be a mapping with `name` and `uri`")).at_line(line),
            );
            continue;
        };
        if let Some(dir) = entry.get("discover") {
            match (dir, entry.len()) {
                (Value::String(dir), 1) if !dir.trim().is_empty() => {
                    discover_dirs.push((at, line, dir.clone()));
                }
                (Value::String(_), 1) | (_, 1) => problems.push(
                    Problem::new(format!("{at}.discover must be a directory"))
                        .at_line(line)
                        .fix("write `- discover: ./policies` (relative to the manifest)"),
                ),
                _ => problems.push(
                    Problem::new(format!("{at}: `discover` stands alone in its entry"))
                        .at_line(line)
                        .fix("give `discover` an entry of its own (`- discover: ./policies`), and name other crates in entries with name and uri"),
                ),
            }
            continue;
        }
        unknown_keys(entry, &ENTRY_KEYS, &format!("{at}."), text, problems);
        let name = required_string(entry, "name", &at, line, problems);
        let uri = required_string(entry, "uri", &at, line, problems);
        let version = match entry.get("version") {
            None => None,
            Some(Value::String(v)) => {
                if cargo_metadata::semver::Version::parse(v).is_err() {
                    problems.push(
                        Problem::new(format!("{at}.version {v:?} is not a semantic version"))
                            .at_line(line)
                            .fix("write it as MAJOR.MINOR.PATCH, e.g. 1.0.0, or leave it out"),
                    );
                }
                Some(v.clone())
            }
            Some(other) => {
                problems.push(
                    Problem::new(format!("{at}.version must be a string, found {other}"))
                        .at_line(line)
                        .fix("quote it if needed: version: \"1.0.0\""),
                );
                None
            }
        };
        let (Some(name), Some(uri)) = (name, uri) else {
            continue;
        };
        // Entries without a version are told apart by their crates (validation compares the
        // versions their definitions declare).
        let identity = (name.clone(), version.clone().unwrap_or_else(|| uri.clone()));
        if let Some(first) = seen.insert(identity, i) {
            let label = version
                .as_ref()
                .map_or(name.clone(), |v| format!("{name}:{v}"));
            problems.push(
                Problem::new(format!(
                    "{at}: {label} is listed twice (also policies[{first}])"
                ))
                .at_line(line)
                .fix("remove one entry; to build in two versions, give each its own version"),
            );
            continue;
        }
        match resolve(&uri, base) {
            Ok(dir) => out.push(Entry {
                name,
                version,
                uri,
                dir,
                discovered_from: None,
            }),
            Err(problem) => problems.push(problem.at_line(line)),
        }
    }
    for (at, line, dir) in discover_dirs {
        match discover(&dir, base) {
            Ok(found) if found.is_empty() => problems.push(
                Problem::new(format!(
                    "{at}.discover {dir:?} holds no policy crate (<name>/v<version>/ with Cargo.toml and policy-definition.yaml)"
                ))
                .at_line(line)
                .fix("point it at the directory that holds the <name>/ directories"),
            ),
            Ok(found) => {
                for entry in found {
                    // Explicit entries win: the same crate, or the same name and version.
                    let listed = out.iter().any(|e| {
                        e.dir == entry.dir
                            || (e.name == entry.name
                                && e.version.as_deref().or(definition_version(&e.dir).as_deref())
                                    == entry.version.as_deref())
                    });
                    if !listed {
                        out.push(entry);
                    }
                }
            }
            Err(problem) => problems.push(problem.at_line(line)),
        }
    }
    out
}

/// Every `<name>/v<version>/` crate directly under `dir` (a Cargo.toml and a
/// policy-definition.yaml in it), sorted by name and version.
fn discover(dir: &str, base: &Path) -> Result<Vec<Entry>, Problem> {
    let root = resolve(dir, base)?;
    let read = |path: &Path| {
        std::fs::read_dir(path).map_err(|e| {
            Problem::new(format!(
                "discover {dir:?}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let mut found = Vec::new();
    for name_dir in read(&root)?.flatten() {
        let name = name_dir.file_name().to_string_lossy().into_owned();
        if !name_dir.path().is_dir() || name.starts_with('.') {
            continue;
        }
        for version_dir in read(&name_dir.path())?.flatten() {
            let label = version_dir.file_name().to_string_lossy().into_owned();
            let crate_dir = version_dir.path();
            let Some(version) = label.strip_prefix('v') else {
                continue;
            };
            if cargo_metadata::semver::Version::parse(version).is_err()
                || !crate_dir.join("Cargo.toml").is_file()
                || !crate_dir.join("policy-definition.yaml").is_file()
            {
                continue;
            }
            let Ok(canonical) = crate_dir.canonicalize() else {
                continue;
            };
            found.push(Entry {
                name: name.clone(),
                version: Some(version.to_owned()),
                uri: format!("{}/{name}/{label}", dir.trim_end_matches('/')),
                dir: canonical,
                discovered_from: Some(dir.to_owned()),
            });
            if found.len() > MAX_DISCOVERED {
                return Err(Problem::new(format!(
                    "discover {dir:?} finds more than {MAX_DISCOVERED} policy crates"
                ))
                .fix("point it at a narrower directory"));
            }
        }
    }
    found.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(found)
}

/// The `version` a crate's policy-definition.yaml declares, if it can be read.
fn definition_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("policy-definition.yaml")).ok()?;
    let doc: Value = serde_saphyr::from_str(&text).ok()?;
    doc.get("version")?.as_str().map(str::to_owned)
}

fn required_string(
    entry: &Map<String, Value>,
    key: &str,
    at: &str,
    line: Option<usize>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match entry.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            problems
                .push(Problem::new(format!("{at}.{key} must be a non-empty string")).at_line(line));
            None
        }
        None => {
            let fix = if key == "uri" {
                "add `uri:` with the policy crate's directory (relative to the manifest, absolute, or file://)"
            } else {
                "add `name:` with the name from the crate's policy-definition.yaml"
            };
            problems.push(
                Problem::new(format!("{at}.{key} is missing"))
                    .at_line(line)
                    .fix(fix),
            );
            None
        }
    }
}

fn unknown_keys(
    map: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
    text: &str,
    problems: &mut Vec<Problem>,
) {
    for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
        let line = line_of(text, |l| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        });
        let fix = match suggest(key, known) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("the keys here are {}", known.join(", ")),
        };
        problems.push(
            Problem::new(format!("unknown key `{prefix}{key}`"))
                .at_line(line)
                .fix(fix),
        );
    }
}

/// The known key `key` was most likely meant to be.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    let synonym = match lower.as_str() {
        "path" | "source" | "src" | "dir" | "directory" | "location" | "url" | "crate" => {
            Some("uri")
        }
        "policy" | "plugins" | "plugin" => Some("policies"),
        "ver" | "tag" => Some("version"),
        _ => None,
    };
    if let Some(s) = synonym.and_then(|s| known.iter().find(|k| **k == s)) {
        return Some(s);
    }
    known
        .iter()
        .map(|k| (distance(&lower, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The directory `uri` names: relative to `base`, absolute, or `file://`.
fn resolve(uri: &str, base: &Path) -> Result<PathBuf, Problem> {
    let raw = if let Some(rest) = uri.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = uri.split_once("://") {
        return Err(Problem::new(format!(
            "uri {uri:?}: the scheme {scheme}:// is not supported"
        ))
        .fix(
            "check the crate out or mount it, then point uri at its directory (a path or file://)",
        ));
    } else {
        PathBuf::from(uri)
    };
    let path = if raw.is_absolute() {
        raw
    } else {
        base.join(raw)
    };
    match path.canonicalize() {
        Ok(dir) if dir.is_dir() => Ok(dir),
        Ok(_) => Err(Problem::new(format!(
            "uri {uri:?} resolves to {}, which is not a directory",
            path.display()
        ))
        .fix("point uri at the policy crate's directory (the one with Cargo.toml)")),
        Err(_) => Err(Problem::new(format!(
            "uri {uri:?} resolves to {}, which does not exist",
            path.display()
        ))
        .fix("relative uris are resolved from the manifest's directory")),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_suggestions() {
        assert_eq!(suggest("url", &ENTRY_KEYS), Some("uri"));
        assert_eq!(suggest("nmae", &ENTRY_KEYS), Some("name"));
        assert_eq!(suggest("polices", &TOP_KEYS), Some("policies"));
        assert_eq!(suggest("colour", &ENTRY_KEYS), None);
    }
}
