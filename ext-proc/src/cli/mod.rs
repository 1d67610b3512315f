//! The engine's command line: what a built `policy-engine` binary runs.
//!
//! The builder's generated `main` registers the manifest's policies and calls [`run`].

mod args;
mod decisions;
mod envoy_config;
mod health;
mod serve;

use crate::admin::policy_list;
use crate::{Registry, load};
use anyhow::Context;
use args::{Cli, Command};
use clap::Parser;
use health::{healthcheck, ready_check};
use serve::serve;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Runs the engine's command line with the compiled-in `registry`; `build_info` is what
/// `build-info` prints. Returns the process exit code.
pub fn run(registry: Registry, build_info: serde_json::Value) -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Test {
        files,
        config,
        fail_under,
        format,
    }) = &cli.command
    {
        return match decisions::run(files, config.as_deref(), *fail_under, *format, &registry) {
            Ok(decisions::Verdict::Passed) => ExitCode::SUCCESS,
            Ok(decisions::Verdict::Failed) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("policy-engine test: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        None => serve(cli.serve, registry, &build_info),
        Some(Command::Serve(args)) => serve(*args, registry, &build_info),
        Some(Command::Validate { config }) => validate(&config, &registry),
        Some(Command::Test { .. }) => Ok(()),
        Some(Command::EnvoyConfig {
            routes,
            engine,
            concurrency,
            bootstrap,
            listen,
            admin,
            upstream,
        }) => {
            let bootstrap = match (bootstrap, &listen, &admin, &upstream) {
                (true, Some(listen), Some(admin), Some(upstream)) => {
                    Some((listen.as_str(), admin.as_str(), upstream.as_str()))
                }
                _ => None,
            };
            let options = envoy_config::Options {
                engine: &engine,
                concurrency,
                bootstrap,
            };
            envoy_config::print(&routes, &options, &registry)
        }
        Some(Command::Policies) => print_json(&policy_list(&registry)),
        Some(Command::BuildInfo) => print_json(&build_info),
        Some(Command::Healthcheck {
            admin: Some(admin),
            timeout_ms,
            ..
        }) if admin != "off" => ready_check(&admin, Duration::from_millis(timeout_ms)),
        Some(Command::Healthcheck {
            listen, timeout_ms, ..
        }) => healthcheck(&listen, Duration::from_millis(timeout_ms)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("policy-engine: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn validate(config: &PathBuf, registry: &Registry) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let snapshot = load(&text, &config.display().to_string(), registry)?;
    for warning in snapshot.warnings() {
        eprintln!("warning: {}: {warning}", config.display());
    }
    println!(
        "{}: valid ({} routes)",
        config.display(),
        snapshot.route_names().len()
    );
    Ok(())
}
