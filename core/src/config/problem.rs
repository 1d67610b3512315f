//! Configuration errors: every problem of a document, each with its location.

use std::fmt;

/// One thing wrong with a route configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `routes[2].policies[0].params.requestsPerSecond`.
    pub path: String,
    /// The route and policy concerned, e.g. `route "api", policy rate-limit:1.0.0`.
    pub context: Option<String>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        })?;
        if let Some(context) = &self.context {
            write!(f, " ({context})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a route configuration was rejected; nothing of it was activated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The document is larger than the engine accepts.
    #[error("{source_name}: the document is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// The file or stream it came from.
        source_name: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The text is not a route configuration document (YAML syntax, unknown or missing keys,
    /// wrong types).
    #[error("{source_name}: {source}")]
    Parse {
        /// The file or stream it came from.
        source_name: String,
        /// The parser's report, with line and column.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A structured document (from xDS) is not a route configuration: unknown or missing keys,
    /// wrong types.
    #[error("{source_name}: {source}")]
    Shape {
        /// The stream or resource it came from.
        source_name: String,
        /// What does not fit.
        #[source]
        source: serde_json::Error,
    },
    /// The document parses but does not hold together.
    #[error("{source_name}: {} problem{} found:\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems))]
    Invalid {
        /// The file or stream it came from.
        source_name: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`] document (empty otherwise).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
