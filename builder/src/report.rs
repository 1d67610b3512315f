//! Problems the builder reports: where (file, line), what is wrong, how to fix it; and the stage
//! they stop, which decides the exit code.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The builder's stages, in order. Each failing stage exits with its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading and checking `policy-manifest.yaml`.
    Manifest,
    /// Checking each policy crate.
    Validation,
    /// Rendering the registry crate.
    Generation,
    /// Compiling the engine.
    Compilation,
    /// Writing the binary, Dockerfile and build info, and checking the result.
    Packaging,
}

impl Stage {
    /// The process exit code when this stage fails (documented in README.md and docs/builder.md).
    pub fn exit_code(self) -> u8 {
        match self {
            Stage::Manifest => 3,
            Stage::Validation => 4,
            Stage::Generation => 5,
            Stage::Compilation => 6,
            Stage::Packaging => 7,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Manifest => "manifest",
            Stage::Validation => "validation",
            Stage::Generation => "generation",
            Stage::Compilation => "compilation",
            Stage::Packaging => "packaging",
        })
    }
}

/// One problem. In JSON every problem has `file`, `line` and `policy` (`null` where they do not
/// apply), and `column` where the compiler gave one.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The file at fault.
    pub file: Option<PathBuf>,
    /// The line in it, 1-based, where known.
    pub line: Option<usize>,
    /// The column in that line, 1-based, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// The manifest entry (`name` or `name:version`) the problem belongs to.
    pub policy: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Problem {
    /// A problem with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            file: None,
            line: None,
            column: None,
            policy: None,
            message: message.into(),
            fix: None,
        }
    }

    /// In `file`.
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }

    /// At `line` of the file, when known.
    pub fn at_line(mut self, line: impl Into<Option<usize>>) -> Self {
        self.line = line.into();
        self
    }

    /// At `column` of the line, when known.
    pub fn at_column(mut self, column: usize) -> Self {
        self.column = u32::try_from(column).ok();
        self
    }

    /// Belonging to manifest entry `policy`.
    pub fn for_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    /// With a fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(policy) = &self.policy {
            write!(f, "[{policy}] ")?;
        }
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

/// A stage that failed, with every problem it found.
#[derive(Debug, thiserror::Error)]
#[error("{stage} failed with {} problem(s)", problems.len())]
pub struct Failure {
    /// The stage.
    pub stage: Stage,
    /// What it found.
    pub problems: Vec<Problem>,
}

impl Failure {
    /// A failure of `stage` with one problem.
    pub fn one(stage: Stage, problem: Problem) -> Self {
        Failure {
            stage,
            problems: vec![problem],
        }
    }
}

/// 1-based line of the first line in `text` that `matches`.
pub fn line_of(text: &str, matches: impl Fn(&str) -> bool) -> Option<usize> {
    text.lines().position(matches).map(|i| i + 1)
}
