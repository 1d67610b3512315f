//! Stage 5: the output directory (binary, runtime Dockerfile, build-info.json), then a check that
//! the binary reports exactly the manifest's policies.

use crate::generate::{Abi, BuildInfo, dockerfile};
use crate::report::{Failure, Problem, Stage};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the output directory holds.
#[derive(Debug, serde::Serialize)]
pub struct Output {
    /// The engine binary.
    pub binary: PathBuf,
    /// The runtime Dockerfile.
    pub dockerfile: PathBuf,
    /// The build information.
    pub build_info: PathBuf,
    /// The binary's size in bytes.
    pub binary_bytes: u64,
}

/// Writes the output directory `out` and checks the binary.
pub fn package(
    built: &Path,
    info: &BuildInfo,
    out: &Path,
    base_image: &str,
) -> Result<Output, Failure> {
    let fail = |message: String| Failure::one(Stage::Packaging, Problem::new(message));
    std::fs::create_dir_all(out).map_err(|e| fail(format!("creating {}: {e}", out.display())))?;
    let binary = out.join("policy-engine");
    // Copy to a temporary name and rename, so a running engine's file is never half-written.
    let staged = out.join(".policy-engine.new");
    std::fs::copy(built, &staged)
        .and_then(|_| std::fs::rename(&staged, &binary))
        .map_err(|e| fail(format!("copying the binary to {}: {e}", binary.display())))?;
    let dockerfile_path = out.join("Dockerfile");
    std::fs::write(&dockerfile_path, dockerfile(info, base_image)?)
        .map_err(|e| fail(format!("writing {}: {e}", dockerfile_path.display())))?;
    // The image needs the binary and the build information only, not the generated crate.
    let ignore = out.join(".dockerignore");
    std::fs::write(&ignore, "*\n!policy-engine\n!build-info.json\n")
        .map_err(|e| fail(format!("writing {}: {e}", ignore.display())))?;
    let info_path = out.join("build-info.json");
    let text = serde_json::to_string_pretty(info).map_err(|e| fail(e.to_string()))? + "\n";
    std::fs::write(&info_path, text)
        .map_err(|e| fail(format!("writing {}: {e}", info_path.display())))?;

    verify(&binary, info)?;
    let binary_bytes = std::fs::metadata(&binary).map_or(0, |m| m.len());
    Ok(Output {
        binary,
        dockerfile: dockerfile_path,
        build_info: info_path,
        binary_bytes,
    })
}

/// What the output directory holds for the Envoy module.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleOutput {
    /// The shared library Envoy loads.
    pub module: PathBuf,
    /// The Envoy version it is built for.
    pub envoy: Abi,
    /// The HTTP filter configuration that loads it.
    pub envoy_config: PathBuf,
    /// The build information.
    pub build_info: PathBuf,
    /// The library's size in bytes.
    pub module_bytes: u64,
}

/// The module's file name; Envoy finds it by the name `policy_module`.
const MODULE_FILE: &str = "libpolicy_module.so";

/// Writes the module, the filter configuration that loads it and the build information into
/// `out`, and checks the library is a module.
pub fn package_module(
    built: &Path,
    info: &BuildInfo,
    out: &Path,
    abi: Abi,
) -> Result<ModuleOutput, Failure> {
    let fail = |message: String| Failure::one(Stage::Packaging, Problem::new(message));
    std::fs::create_dir_all(out).map_err(|e| fail(format!("creating {}: {e}", out.display())))?;
    let module = out.join(MODULE_FILE);
    // Envoy maps the file: replace it by rename, never rewrite it in place.
    let staged = out.join(".libpolicy_module.so.new");
    std::fs::copy(built, &staged)
        .and_then(|_| std::fs::rename(&staged, &module))
        .map_err(|e| fail(format!("copying the module to {}: {e}", module.display())))?;
    let bytes =
        std::fs::read(&module).map_err(|e| fail(format!("reading {}: {e}", module.display())))?;
    let hook = b"envoy_dynamic_module_on_program_init";
    if !bytes.starts_with(b"\x7fELF") || !bytes.windows(hook.len()).any(|w| w == hook) {
        return Err(fail(format!(
            "{} is not an Envoy dynamic module (no envoy_dynamic_module_on_program_init)",
            module.display()
        )));
    }
    let envoy_config = out.join("envoy-module.yaml");
    std::fs::write(&envoy_config, filter_config(info, abi))
        .map_err(|e| fail(format!("writing {}: {e}", envoy_config.display())))?;
    let info_path = out.join("build-info.json");
    let text = serde_json::to_string_pretty(info).map_err(|e| fail(e.to_string()))? + "\n";
    std::fs::write(&info_path, text)
        .map_err(|e| fail(format!("writing {}: {e}", info_path.display())))?;
    Ok(ModuleOutput {
        module,
        envoy: abi,
        envoy_config,
        build_info: info_path,
        module_bytes: bytes.len() as u64,
    })
}

/// The HTTP filter entry that loads the module (docs/envoy-module.md explains each field).
fn filter_config(info: &BuildInfo, abi: Abi) -> String {
    let policies: Vec<String> = info
        .policies
        .iter()
        .map(|p| format!("{}:{}", p.name, p.version))
        .collect();
    format!(
        "# @generated by policy-builder {builder} — do not edit.\n\
         # The HTTP filter that runs the policies of {manifest} inside Envoy {envoy}:\n\
         # {policies}.\n\
         # Put {MODULE_FILE} in the directory ENVOY_DYNAMIC_MODULES_SEARCH_PATH names, place this\n\
         # entry before envoy.filters.http.router, and name each route (its name is the route key).\n\
         - name: envoy.filters.http.dynamic_modules\n\
         \x20 typed_config:\n\
         \x20   \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n\
         \x20   dynamic_module_config: {{name: policy_module, do_not_close: true}}\n\
         \x20   filter_name: policy\n\
         \x20   filter_config:\n\
         \x20     \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20     value: |\n\
         \x20       configFile: /etc/policy/routes.yaml\n",
        builder = info.builder_version,
        manifest = info.manifest,
        envoy = abi.version(),
        policies = policies.join(", "),
    )
}

/// Runs `build-info` and `policies` on the binary: both must list exactly the manifest's
/// policies.
fn verify(binary: &Path, info: &BuildInfo) -> Result<(), Failure> {
    let expected: BTreeSet<String> = info
        .policies
        .iter()
        .map(|p| format!("{}:{}", p.name, p.version))
        .collect();
    let from_info = keys(&run_json(binary, "build-info")?["policies"]);
    let from_registry = keys(&run_json(binary, "policies")?);
    for (what, found) in [("build-info", from_info), ("policies", from_registry)] {
        if found != expected {
            return Err(Failure::one(
                Stage::Packaging,
                Problem::new(format!(
                    "`policy-engine {what}` lists [{}] but the manifest built [{}]",
                    found.into_iter().collect::<Vec<_>>().join(", "),
                    expected.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
                .fix("a policy crate's export does not match its definition; rebuild with a clean target directory and report it if it persists"),
            ));
        }
    }
    Ok(())
}

/// `name:version` of each entry of a JSON list.
fn keys(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}:{}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn run_json(binary: &Path, command: &str) -> Result<serde_json::Value, Failure> {
    let fail = |message: String| Failure::one(Stage::Packaging, Problem::new(message));
    let out = Command::new(binary)
        .arg(command)
        .output()
        .map_err(|e| fail(format!("running {} {command}: {e}", binary.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "`policy-engine {command}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("`policy-engine {command}` did not print JSON: {e}")))
}
