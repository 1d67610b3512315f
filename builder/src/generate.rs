//! Stage 3: render the registry crate (and the build information it embeds) from `templates/`.

use crate::manifest::Manifest;
use crate::report::{Failure, Problem, Stage};
use crate::validate::ValidPolicy;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_TOML: &str = include_str!("../../templates/registry/Cargo.toml.tera");
const MAIN_RS: &str = include_str!("../../templates/registry/main.rs.tera");
const DOCKERFILE: &str = include_str!("../../templates/Dockerfile.tera");
const MODULE_CARGO_TOML: &str = include_str!("../../templates/module/Cargo.toml.tera");
const MODULE_LIB_RS: &str = include_str!("../../templates/module/lib.rs.tera");
/// The release profile both hosts' crates are built with.
const RELEASE_PROFILE: &str = include_str!("../../templates/release-profile.toml.tera");
/// The crates of both hosts that only load configuration: optimised for size.
const CONFIGURATION_CRATES: [&str; 6] = [
    "fancy-regex",
    "granit-parser",
    "jsonschema",
    "policy-definition",
    "referencing",
    "serde-saphyr",
];
/// The engine's command line, too.
const ENGINE_CONFIGURATION_CRATES: [&str; 2] = ["clap", "clap_builder"];

/// The Envoy ABI a module is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Abi {
    /// Envoy 1.36.x.
    #[serde(rename = "1.36")]
    V1_36,
    /// Envoy 1.40.x.
    #[serde(rename = "1.40")]
    V1_40,
}

impl Abi {
    /// The Envoy version line, `1.36`.
    pub fn version(self) -> &'static str {
        match self {
            Abi::V1_36 => "1.36",
            Abi::V1_40 => "1.40",
        }
    }

    /// The `policy-envoy-module` feature that selects it.
    fn feature(self) -> &'static str {
        match self {
            Abi::V1_36 => "envoy-1-36",
            Abi::V1_40 => "envoy-1-40",
        }
    }
}

/// Which host the generated crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The `policy-engine` binary (the ext_proc host).
    ExtProc,
    /// `libpolicy_module.so`, an Envoy dynamic module for this ABI.
    Module(Abi),
}

/// The default runtime image base: glibc, CA certificates, no shell, non-root user 65532.
pub const DEFAULT_BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// Where the engine's sources are, and how to build.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The engine source tree (with `core/`, `ext-proc/`, `policy-sdk/`, `Cargo.lock`).
    pub engine_dir: PathBuf,
    /// Depend on every sample policy crate, registered or not, so cargo resolves the same
    /// features as the warm cache was built with (see [`feature_pins`]).
    pub pin_features: bool,
}

/// The sample policy crates of the engine source not in `policies`, as `(package, dir)`.
///
/// Cargo unifies features over the whole graph: a manifest without, say, the JWT sample would
/// compile shared crates with fewer features than the builder image's warm cache and rebuild
/// them and everything above. Unused dependencies pin the graph (and are not linked: nothing
/// references them).
fn feature_pins(
    engine_dir: &Path,
    policies: &[ValidPolicy],
) -> Result<Vec<(String, PathBuf)>, String> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(engine_dir.join("Cargo.toml"))
        .no_deps()
        .exec()
        .map_err(|e| format!("reading the engine workspace for --pin-features: {e}"))?;
    let samples = engine_dir.join("sample-policies");
    let used: Vec<PathBuf> = policies
        .iter()
        .filter_map(|p| p.entry.dir.canonicalize().ok())
        .collect();
    // A manifest may list its own copies of the samples (the repository mounted in the builder
    // image): cargo cannot hold two packages of one name, so those names are not pinned.
    let named: std::collections::BTreeSet<&str> = policies
        .iter()
        .flat_map(|p| std::iter::once(&p.package).chain(&p.path_dependencies))
        .map(String::as_str)
        .collect();
    let mut pins: Vec<(String, PathBuf)> = metadata
        .packages
        .iter()
        .filter_map(|package| {
            let dir = package
                .manifest_path
                .parent()?
                .as_std_path()
                .canonicalize()
                .ok()?;
            (dir.starts_with(&samples)
                && !used.contains(&dir)
                && !named.contains(package.name.as_str()))
            .then(|| (package.name.to_string(), dir))
        })
        .collect();
    pins.sort();
    Ok(pins)
}

/// What `build-info.json` holds (embedded in the binary, printed by `policy-engine build-info`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    /// The builder's version.
    pub builder_version: String,
    /// The engine's version.
    pub engine_version: String,
    /// The manifest's file name.
    pub manifest: String,
    /// SHA-256 of the manifest, hex.
    pub manifest_sha256: String,
    /// Build time, RFC 3339 UTC (`SOURCE_DATE_EPOCH` when set).
    pub built_at: String,
    /// `rustc --version`.
    pub rustc: String,
    /// The target triple.
    pub target: String,
    /// The cargo profile.
    pub profile: String,
    /// The policies, sorted by name and version.
    pub policies: Vec<PolicyInfo>,
}

/// One compiled-in policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Phases.
    pub phases: Vec<String>,
    /// `uri` as the manifest wrote it.
    pub uri: String,
    /// The crate directory it resolved to.
    pub path: String,
    /// SHA-256 over the crate's files, hex.
    pub content_hash: String,
    /// The manifest's `discover:` directory it was found under (absent: listed by itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered_from: Option<String>,
}

#[derive(Serialize)]
struct PolicyView {
    alias: String,
    package: String,
    path: String,
    key: String,
    uri: String,
}

/// Renders the registry crate of `host` into `dir` and returns its build information.
pub fn generate(
    manifest: &Manifest,
    policies: &[ValidPolicy],
    sources: &Sources,
    dir: &Path,
    host: Host,
) -> Result<BuildInfo, Failure> {
    let fail = |message: String| Failure::one(Stage::Generation, Problem::new(message));
    let mut policies = policies.to_vec();
    policies.sort_by(|a, b| {
        (
            a.definition.name.as_str(),
            version_key(&a.definition.version),
        )
            .cmp(&(
                b.definition.name.as_str(),
                version_key(&b.definition.version),
            ))
    });
    let (rustc, target) = rustc_info().map_err(fail)?;
    let info = BuildInfo {
        builder_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine_version: env!("CARGO_PKG_VERSION").to_owned(),
        manifest: manifest
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        manifest_sha256: manifest.sha256.clone(),
        built_at: build_time(),
        rustc,
        target,
        profile: "release".to_owned(),
        policies: policies
            .iter()
            .map(|p| PolicyInfo {
                name: p.definition.name.clone(),
                version: p.definition.version.clone(),
                phases: p
                    .definition
                    .phases
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                uri: p.entry.uri.clone(),
                path: p.entry.dir.display().to_string(),
                content_hash: p.content_hash.clone(),
                discovered_from: p.entry.discovered_from.clone(),
            })
            .collect(),
    };
    let views: Vec<PolicyView> = policies
        .iter()
        .map(|p| PolicyView {
            alias: alias(&p.definition.name, &p.definition.version),
            package: p.package.clone(),
            path: toml_escape(&p.entry.dir.display().to_string()),
            key: p.key(),
            uri: p.entry.uri.clone(),
        })
        .collect();
    let pins: Vec<PolicyView> = if sources.pin_features {
        feature_pins(&sources.engine_dir, &policies)
            .map_err(fail)?
            .into_iter()
            .map(|(package, dir)| PolicyView {
                alias: format!("pin_{}", package.replace('-', "_")),
                package,
                path: toml_escape(&dir.display().to_string()),
                key: String::new(),
                uri: String::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut context = context(&info);
    context.insert("policies", &views);
    context.insert("pins", &pins);
    for (key, dir) in [
        ("core_path", "core"),
        ("ext_proc_path", "ext-proc"),
        ("module_path", "module"),
    ] {
        context.insert(
            key,
            &toml_escape(&sources.engine_dir.join(dir).display().to_string()),
        );
    }
    context.insert(
        "sdk_path",
        &toml_escape(&sources.engine_dir.join("policy-sdk").display().to_string()),
    );

    let mut size_optimised = CONFIGURATION_CRATES.to_vec();
    if host == Host::ExtProc {
        size_optimised.extend(ENGINE_CONFIGURATION_CRATES);
        size_optimised.sort_unstable();
    }
    context.insert("size_optimised", &size_optimised);
    let profile = render("release profile", RELEASE_PROFILE, &context)?;
    context.insert("release_profile", &profile);

    let (cargo_toml, source, source_path) = match host {
        Host::ExtProc => (CARGO_TOML, MAIN_RS, "src/main.rs"),
        Host::Module(abi) => {
            context.insert("envoy", abi.version());
            context.insert("abi_feature", abi.feature());
            (MODULE_CARGO_TOML, MODULE_LIB_RS, "src/lib.rs")
        }
    };
    let build_info = serde_json::to_string_pretty(&info)
        .map_err(|e| fail(format!("serialising the build information: {e}")))?;
    let files = [
        (
            PathBuf::from("Cargo.toml"),
            render("Cargo.toml", cargo_toml, &context)?,
        ),
        (
            PathBuf::from(source_path),
            render(source_path, source, &context)?,
        ),
        (PathBuf::from("build-info.json"), build_info + "\n"),
    ];
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
    }
    let lock = sources.engine_dir.join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .map_err(|e| fail(format!("copying {}: {e}", lock.display())))?;
    }
    Ok(info)
}

/// Renders the runtime Dockerfile for `info`.
pub fn dockerfile(info: &BuildInfo, base_image: &str) -> Result<String, Failure> {
    let mut context = context(info);
    context.insert("base_image", base_image);
    render("Dockerfile", DOCKERFILE, &context).map_err(|mut f| {
        f.stage = Stage::Packaging;
        f
    })
}

fn context(info: &BuildInfo) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert("builder_version", &info.builder_version);
    context.insert("engine_version", &info.engine_version);
    context.insert("manifest_file", &info.manifest);
    context.insert("manifest_sha256", &info.manifest_sha256);
    context.insert("built_at", &info.built_at);
    let list: Vec<String> = info
        .policies
        .iter()
        .map(|p| format!("{}:{}", p.name, p.version))
        .collect();
    context.insert("policy_list", &list.join(","));
    context
}

fn render(name: &str, template: &str, context: &tera::Context) -> Result<String, Failure> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(name, template)
        .and_then(|()| tera.render(name, context))
        .map_err(|e| {
            let mut message = format!("rendering the {name} template: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            Failure::one(Stage::Generation, Problem::new(message))
        })
}

/// The Rust identifier a policy's crate is renamed to: `policy_<name>_<version>`.
fn alias(name: &str, version: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    format!("policy_{}_{}", clean(name), clean(version))
}

/// Numeric ordering for `MAJOR.MINOR.PATCH`, text order otherwise.
fn version_key(version: &str) -> (Vec<u64>, String) {
    let numbers = version
        .split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect();
    (numbers, version.to_owned())
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `rustc --version` and the host target, from the compiler cargo will use.
fn rustc_info() -> Result<(String, String), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("running {} -vV: {e}", rustc.to_string_lossy()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().unwrap_or_default().to_owned();
    let host = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_default()
        .to_owned();
    if !out.status.success() || version.is_empty() {
        return Err(format!("{} -vV failed", rustc.to_string_lossy()));
    }
    Ok((version, host))
}

/// Now, or `SOURCE_DATE_EPOCH` when set, as RFC 3339 UTC.
fn build_time() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    rfc3339(seconds)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn aliases_are_identifiers_and_versions_sort_numerically() {
        assert_eq!(alias("set-header", "1.0.0"), "policy_set_header_1_0_0");
        assert!(version_key("1.10.0") > version_key("1.9.0"));
    }
}
