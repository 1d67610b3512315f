//! `policy-builder`: builds a policy engine from a `policy-manifest.yaml`.
//!
//! manifest → validated policy crates → generated registry crate → release binary + runtime
//! Dockerfile + build-info.json. Each stage that fails exits with its own code (see
//! `docs/builder.md`).

mod compile;
mod generate;
mod package;
mod scaffold;
mod validate;
mod vendor;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use compile::Artifact;
use generate::Host;
use policy_builder::{manifest, report};
use report::{Failure, Stage};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Builds a policy engine binary with exactly the policies a manifest lists.
#[derive(Debug, Parser)]
#[command(
    name = "policy-builder",
    version,
    args_conflicts_with_subcommands = false
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load, validate, generate, compile and package (the default).
    Build,
    /// Load the manifest and validate every policy crate; nothing is written.
    Validate,
    /// Load, validate and write the registry crate to --out, ready for `cargo build`.
    Generate,
    /// Copy every crate the engine, the sample policies and (with --manifest) the manifest's
    /// policies need into --out, for offline builds with --vendor-dir.
    Vendor,
    /// Write a new policy crate that builds and tests on its own (`cargo test`) against this
    /// builder's SDK, and print the manifest entry that adds it to an engine.
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// The policy's name: lower-case words joined by '-' (e.g. `header-stamp`).
    #[arg(value_parser = policy_name)]
    name: String,
    /// The phases it runs in.
    #[arg(long, value_delimiter = ',', default_value = "request")]
    phases: Vec<PhaseArg>,
    /// Where to write the crate (default NAME/v0.1.0).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A policy name as the definition schema allows it (a command-line error otherwise).
fn policy_name(name: &str) -> Result<String, String> {
    scaffold::check_name(name)
        .map(|()| name.to_owned())
        .map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PhaseArg {
    Request,
    Response,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The policy manifest.
    #[arg(long, global = true, env = "POLICY_MANIFEST")]
    manifest: Option<PathBuf>,
    /// The output directory (build: binary, Dockerfile, build-info.json; generate: the crate).
    #[arg(
        long,
        global = true,
        env = "POLICY_BUILDER_OUT",
        default_value = "dist"
    )]
    out: PathBuf,
    /// Report format: progress lines for humans, or one JSON document on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The engine source tree (with core/, ext-proc/, policy-sdk/ and Cargo.lock).
    #[arg(long, global = true, env = "POLICY_ENGINE_SOURCE")]
    engine_source: Option<PathBuf>,
    /// Cargo's target directory, kept between builds so rebuilds are fast.
    #[arg(long, global = true, env = "POLICY_BUILDER_TARGET_DIR")]
    target_dir: Option<PathBuf>,
    /// Build without network access (vendored or already fetched dependencies).
    #[arg(long, global = true, env = "POLICY_BUILDER_OFFLINE")]
    offline: bool,
    /// Vendored crates (from `policy-builder vendor`) to build from instead of crates.io;
    /// implies --offline.
    #[arg(long, global = true, env = "POLICY_BUILDER_VENDOR_DIR")]
    vendor_dir: Option<PathBuf>,
    /// Depend on every sample policy crate (unregistered) so a build reuses a cache warmed with
    /// the sample manifest instead of re-resolving features (the builder image sets it).
    #[arg(long, global = true, env = "POLICY_BUILDER_PIN_FEATURES")]
    pin_features: bool,
    /// The runtime image's base in the generated Dockerfile.
    #[arg(long, global = true, default_value = generate::DEFAULT_BASE_IMAGE)]
    base_image: String,
    /// What to build: the ext_proc engine (`policy-engine`), the Envoy module
    /// (`libpolicy_module.so`), or both from one validation.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "POLICY_BUILDER_TARGET",
        default_value_t = Target::ExtProc
    )]
    target: Target,
    /// The Envoy the module is built for (each Envoy line has its own module ABI).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "POLICY_BUILDER_ENVOY",
        default_value_t = EnvoyVersion::V1_36
    )]
    envoy: EnvoyVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// The ext_proc engine.
    ExtProc,
    /// The Envoy dynamic module.
    EnvoyModule,
    /// Both.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EnvoyVersion {
    /// Envoy 1.36.x.
    #[value(name = "1.36")]
    V1_36,
    /// Envoy 1.40.x.
    #[value(name = "1.40")]
    V1_40,
}

impl Common {
    /// The hosts to build, in order.
    fn hosts(&self) -> Vec<Host> {
        let abi = match self.envoy {
            EnvoyVersion::V1_36 => generate::Abi::V1_36,
            EnvoyVersion::V1_40 => generate::Abi::V1_40,
        };
        match self.target {
            Target::ExtProc => vec![Host::ExtProc],
            Target::EnvoyModule => vec![Host::Module(abi)],
            Target::Both => vec![Host::ExtProc, Host::Module(abi)],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Build);
    let common = cli.common;
    let started = Instant::now();
    let progress = Progress {
        on: common.format == Format::Text,
    };
    match run(&command, &common, &progress) {
        Ok(summary) => {
            if common.format == Format::Json {
                let mut doc = summary;
                doc["ok"] = json!(true);
                doc["seconds"] = json!(started.elapsed().as_secs_f64());
                println!("{doc:#}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => match error.downcast::<Failure>() {
            Ok(failure) => {
                let code = failure.stage.exit_code();
                if common.format == Format::Json {
                    let problems: Vec<serde_json::Value> = failure
                        .problems
                        .iter()
                        .map(|problem| {
                            let mut value = json!(problem);
                            value["stage"] = json!(failure.stage);
                            value
                        })
                        .collect();
                    let doc = json!({
                        "ok": false,
                        "stage": failure.stage,
                        "exitCode": code,
                        "problems": problems,
                    });
                    println!("{doc:#}");
                } else {
                    eprintln!("error: {failure}");
                    for problem in &failure.problems {
                        eprintln!("  - {}", problem.to_string().replace('\n', "\n    "));
                    }
                }
                ExitCode::from(code)
            }
            Err(error) => {
                if common.format == Format::Json {
                    println!(
                        "{:#}",
                        json!({"ok": false, "exitCode": 1, "error": format!("{error:#}")})
                    );
                } else {
                    eprintln!("error: {error:#}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

/// Human progress on stderr (nothing in JSON mode).
struct Progress {
    on: bool,
}

impl Progress {
    fn step(&self, n: usize, of: usize, stage: Stage, what: impl std::fmt::Display) {
        if self.on {
            eprintln!("[{n}/{of}] {:<12}{what}", stage.to_string());
        }
    }
}

fn run(
    command: &Command,
    common: &Common,
    progress: &Progress,
) -> anyhow::Result<serde_json::Value> {
    let engine_dir = engine_source(common.engine_source.as_deref())?;
    if let Command::New(args) = command {
        return new_policy(args, &engine_dir, progress);
    }
    if let Command::Vendor = command {
        return vendor::vendor(&engine_dir, common.manifest.as_deref(), &common.out);
    }
    let Some(manifest_path) = &common.manifest else {
        bail!("no manifest: pass --manifest policy-manifest.yaml (or set POLICY_MANIFEST)");
    };
    let steps = match command {
        Command::Build | Command::Vendor | Command::New(_) => 5,
        Command::Validate => 2,
        Command::Generate => 3,
    };
    let toolchain = toolchain(&engine_dir)?;

    let manifest = manifest::load(manifest_path)?;
    let discovered: Vec<&manifest::Entry> = manifest
        .policies
        .iter()
        .filter(|e| e.discovered_from.is_some())
        .collect();
    progress.step(
        1,
        steps,
        Stage::Manifest,
        format_args!(
            "{}: {} {}{}",
            manifest_path.display(),
            manifest.policies.len(),
            if manifest.policies.len() == 1 {
                "policy"
            } else {
                "policies"
            },
            if discovered.is_empty() {
                String::new()
            } else {
                let found: Vec<String> = discovered
                    .iter()
                    .map(|e| format!("{} ({})", e.label(), e.uri))
                    .collect();
                format!("; discovered: {}", found.join(", "))
            }
        ),
    );
    let policies = validate::validate(&manifest.policies, &toolchain)?;
    let keys: Vec<String> = policies.iter().map(validate::ValidPolicy::key).collect();
    progress.step(
        2,
        steps,
        Stage::Validation,
        format_args!("ok: {}", keys.join(", ")),
    );
    let mut summary = json!({"policies": keys, "manifestSha256": manifest.sha256});
    if !discovered.is_empty() {
        summary["discovered"] = discovered
            .iter()
            .map(|e| json!({"name": e.name, "version": e.version, "uri": e.uri, "from": e.discovered_from}))
            .collect();
    }
    if let Command::Validate = command {
        return Ok(summary);
    }

    let sources = generate::Sources {
        engine_dir,
        pin_features: common.pin_features,
    };
    let hosts = common.hosts();
    let job = Job {
        command,
        common,
        progress,
        manifest: &manifest,
        policies: &policies,
        sources: &sources,
        hosts: hosts.len(),
    };
    for host in hosts {
        build(&job, host, &mut summary)?;
    }
    Ok(summary)
}

/// `new`: scaffolds the crate and says how to use it.
fn new_policy(
    args: &NewArgs,
    engine_dir: &Path,
    progress: &Progress,
) -> anyhow::Result<serde_json::Value> {
    let toolchain = toolchain(engine_dir)?;
    let new = scaffold::NewPolicy {
        name: &args.name,
        request: args.phases.contains(&PhaseArg::Request),
        response: args.phases.contains(&PhaseArg::Response),
        dir: args.dir.as_deref(),
    };
    let summary = scaffold::scaffold(&new, &toolchain.sdk_dir, &toolchain.sdk_version)?;
    if progress.on {
        let entry = &summary["manifestEntry"];
        let created = summary["created"].as_str().unwrap_or_default();
        eprintln!(
            "created {created}: policy `{}` {}\n\n\
             add it to your policy-manifest.yaml:\n\n  \
             - name: {}\n    version: {}\n    uri: {}\n\n\
             test it: cd {created} && cargo test",
            entry["name"].as_str().unwrap_or_default(),
            entry["version"].as_str().unwrap_or_default(),
            entry["name"].as_str().unwrap_or_default(),
            entry["version"].as_str().unwrap_or_default(),
            entry["uri"].as_str().unwrap_or_default(),
        );
    }
    Ok(summary)
}

/// What every host's build shares.
struct Job<'a> {
    command: &'a Command,
    common: &'a Common,
    progress: &'a Progress,
    manifest: &'a manifest::Manifest,
    policies: &'a [validate::ValidPolicy],
    sources: &'a generate::Sources,
    /// How many hosts this run builds.
    hosts: usize,
}

/// Generates, compiles and packages one host (generates only, for `generate`), adding what it
/// made to `summary`.
fn build(job: &Job<'_>, host: Host, summary: &mut serde_json::Value) -> anyhow::Result<()> {
    let Job {
        command,
        common,
        progress,
        manifest,
        policies,
        sources,
        hosts,
    } = *job;
    let steps = match command {
        Command::Generate => 3,
        _ => 5,
    };
    let (name, crate_key) = match host {
        Host::ExtProc => ("engine-crate", "crate"),
        Host::Module(_) => ("module-crate", "moduleCrate"),
    };
    let crate_dir = match command {
        Command::Generate if hosts == 1 => common.out.clone(),
        _ => common.out.join(name),
    };
    let info = generate::generate(manifest, policies, sources, &crate_dir, host)?;
    progress.step(3, steps, Stage::Generation, crate_dir.display());
    summary[crate_key] = json!(crate_dir);
    if let Command::Generate = command {
        return Ok(());
    }

    let target_dir = target_dir(common.target_dir.as_deref(), &common.out);
    let environment = compile::build_environment();
    let shown: Vec<String> = environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    progress.step(
        4,
        steps,
        Stage::Compilation,
        format_args!(
            "cargo build --release (target dir {}{}{})",
            target_dir.display(),
            if shown.is_empty() { "" } else { "; " },
            shown.join(" ")
        ),
    );
    summary["buildEnvironment"] = json!(environment);
    let options = compile::CargoOptions {
        target_dir,
        offline: common.offline,
        vendor_dir: common
            .vendor_dir
            .as_deref()
            .map(|d| {
                d.canonicalize()
                    .with_context(|| format!("--vendor-dir {}: no such directory", d.display()))
            })
            .transpose()?,
        show_progress: progress.on,
    };
    match host {
        Host::ExtProc => {
            let built = compile::compile(&crate_dir, policies, &options, Artifact::Engine)?;
            let output = package::package(&built, &info, &common.out, &common.base_image)?;
            progress.step(
                5,
                steps,
                Stage::Packaging,
                format_args!(
                    "{} ({:.1} MB), Dockerfile, build-info.json",
                    output.binary.display(),
                    output.binary_bytes as f64 / 1e6
                ),
            );
            summary["output"] = serde_json::to_value(&output)?;
        }
        Host::Module(abi) => {
            let built = compile::compile(&crate_dir, policies, &options, Artifact::Module)?;
            let output = package::package_module(&built, &info, &common.out, abi)?;
            progress.step(
                5,
                steps,
                Stage::Packaging,
                format_args!(
                    "{} for Envoy {} ({:.1} MB), {}, build-info.json",
                    output.module.display(),
                    abi.version(),
                    output.module_bytes as f64 / 1e6,
                    output.envoy_config.display()
                ),
            );
            summary["module"] = serde_json::to_value(&output)?;
        }
    }
    summary["buildInfo"] = serde_json::to_value(&info)?;
    Ok(())
}

/// The engine source tree: the flag, else the tree this builder was compiled from.
fn engine_source(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = flag.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        Path::to_path_buf,
    );
    let dir = dir.canonicalize().with_context(|| {
        format!(
            "the engine source {} does not exist; pass --engine-source",
            dir.display()
        )
    })?;
    for part in [
        "core/Cargo.toml",
        "ext-proc/Cargo.toml",
        "policy-sdk/Cargo.toml",
    ] {
        if !dir.join(part).is_file() {
            bail!(
                "{} is not the engine source tree (no {part}); pass --engine-source or set POLICY_ENGINE_SOURCE",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// The SDK the engine is built with: its version and directory.
fn toolchain(engine_dir: &Path) -> anyhow::Result<validate::Toolchain> {
    let sdk_toml = engine_dir.join("policy-sdk/Cargo.toml");
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(&sdk_toml)
        .no_deps()
        .exec()
        .with_context(|| format!("reading {}", sdk_toml.display()))?;
    let sdk = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "policy-sdk")
        .context("the engine source has no policy-sdk package")?;
    Ok(validate::Toolchain {
        sdk_version: sdk.version.clone(),
        sdk_dir: engine_dir.join("policy-sdk"),
    })
}

/// `--target-dir`, else `$XDG_CACHE_HOME` or `~/.cache` `/policy-builder/target`, else
/// `OUT/.target`.
fn target_dir(flag: Option<&Path>, out: &Path) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    cache.map_or_else(|| out.join(".target"), |c| c.join("policy-builder/target"))
}
