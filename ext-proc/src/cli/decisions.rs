//! `policy-engine test`: decision test files run against route configurations, in-process
//! (no Envoy, no network of the engine's own), for CI gates on configuration changes.

use crate::Registry;
use anyhow::{Context, bail};
use policy_core::decisions::{CaseResult, Coverage, DecisionFile, run_case};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Lines for people: failures side by side with the explain trace, then coverage.
    Text,
    /// JUnit XML on stdout, for CI test reports.
    Junit,
}

/// The outcome of a run: whether every case passed and coverage was high enough.
pub(super) enum Verdict {
    Passed,
    Failed,
}

struct FileRun {
    file: PathBuf,
    config: PathBuf,
    results: Vec<CaseResult>,
}

/// Runs `files`; `config` overrides each file's own `config`.
///
/// # Errors
/// A file or configuration that cannot be read or is invalid (nothing is run then).
pub(super) fn run(
    files: &[PathBuf],
    config: Option<&Path>,
    fail_under: Option<f64>,
    format: Format,
    registry: &Registry,
) -> anyhow::Result<Verdict> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut runs = Vec::new();
    let mut coverages: BTreeMap<PathBuf, (policy_core::Snapshot, Coverage)> = BTreeMap::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let tests = DecisionFile::from_yaml(&text)
            .with_context(|| format!("{} is not a decision test file", file.display()))?;
        let config_path = match (config, &tests.config) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(relative)) => file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(relative),
            (None, None) => bail!(
                "{}: no route configuration: add `config: routes.yaml` to the file or pass --config",
                file.display()
            ),
        };
        if !coverages.contains_key(&config_path) {
            let routes = std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?;
            let snapshot =
                policy_core::load(&routes, &config_path.display().to_string(), registry)?;
            let coverage = Coverage::of(&snapshot);
            coverages.insert(config_path.clone(), (snapshot, coverage));
        }
        let Some((snapshot, coverage)) = coverages.get_mut(&config_path) else {
            bail!("{} was not loaded", config_path.display());
        };
        let mut results = Vec::new();
        for case in &tests.cases {
            results.push(runtime.block_on(run_case(snapshot, case, coverage)));
        }
        runs.push(FileRun {
            file: file.clone(),
            config: config_path,
            results,
        });
    }
    let failed = runs
        .iter()
        .flat_map(|r| &r.results)
        .filter(|r| !r.passed())
        .count();
    let short: Vec<(&PathBuf, f64)> = coverages
        .iter()
        .map(|(path, (_, coverage))| (path, coverage.percent()))
        .filter(|(_, percent)| fail_under.is_some_and(|min| *percent < min))
        .collect();
    match format {
        Format::Text => print!("{}", text_report(&runs, &coverages, failed)),
        Format::Junit => print!("{}", junit_report(&runs)),
    }
    for (path, percent) in &short {
        eprintln!(
            "coverage of {} is {percent:.1}%, under --fail-under {:.1}%",
            path.display(),
            fail_under.unwrap_or_default()
        );
    }
    Ok(if failed == 0 && short.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed
    })
}

fn text_report(
    runs: &[FileRun],
    coverages: &BTreeMap<PathBuf, (policy_core::Snapshot, Coverage)>,
    failed: usize,
) -> String {
    let mut out = String::new();
    let total: usize = runs.iter().map(|r| r.results.len()).sum();
    for run in runs {
        let _ = writeln!(
            out,
            "{} ({}): {} cases",
            run.file.display(),
            run.config.display(),
            run.results.len()
        );
        for result in &run.results {
            if result.passed() {
                let _ = writeln!(out, "  ok    {}: {}", result.route, result.name);
                continue;
            }
            let _ = writeln!(out, "  FAIL  {}: {}", result.route, result.name);
            let width = |f: fn(&policy_core::decisions::Mismatch) -> usize, min: usize| {
                result.mismatches.iter().map(f).max().unwrap_or(0).max(min)
            };
            let field_width = width(|m| m.field.len(), "field".len());
            let expected_width = width(|m| m.expected.len(), "expected".len());
            let _ = writeln!(
                out,
                "        {:field_width$}  {:expected_width$}  actual",
                "field", "expected"
            );
            for m in &result.mismatches {
                let _ = writeln!(
                    out,
                    "        {:field_width$}  {:expected_width$}  {}",
                    m.field, m.expected, m.actual
                );
            }
            if !result.trace.is_empty() {
                let _ = writeln!(out, "        explain: {}", result.trace);
            }
        }
    }
    for (path, (_, coverage)) in coverages {
        let _ = writeln!(
            out,
            "coverage of {}: {} of {} policy entries ran ({:.1}%)",
            path.display(),
            coverage.entries_hit.len(),
            coverage.entries.len(),
            coverage.percent()
        );
        let routes = coverage.routes_missed();
        if !routes.is_empty() {
            let _ = writeln!(out, "  routes no case reached: {}", routes.join(", "));
        }
        for (route, phase, key, position) in coverage.entries_missed() {
            let _ = writeln!(
                out,
                "  never ran: route {route}, {phase} phase, {key} (#{})",
                position + 1
            );
        }
    }
    let _ = writeln!(out, "{} passed, {failed} failed", total - failed);
    out
}

fn junit_report(runs: &[FileRun]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for run in runs {
        let failures = run.results.iter().filter(|r| !r.passed()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            xml(&run.file.display().to_string()),
            run.results.len()
        );
        for result in &run.results {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml(&result.route),
                xml(&result.name)
            );
            if result.passed() {
                out.push_str("/>\n");
                continue;
            }
            let details: Vec<String> = result.mismatches.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}\">{}\nexplain: {}</failure>\n    </testcase>",
                xml(&details.join("; ")),
                xml(&details.join("\n")),
                xml(&result.trace)
            );
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
