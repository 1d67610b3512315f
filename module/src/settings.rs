//! The filter configuration Envoy hands the module (`filter_config`, a string): either the route
//! configuration document itself, inline, or settings that point at a file and tune the host.
//!
//! ```yaml
//! # inline: the same document as the engine's file mode
//! version: v1
//! routes:
//!   - route: api
//!     policies: [{name: set-header, version: 1.0.0, params: {request: {set: {x-a: "1"}}}}]
//! ---
//! # or settings (any of these keys makes it settings)
//! configFile: /etc/policy/routes.yaml   # or `config:` with the document inline
//! routeKey: attribute:xds.route_name    # or header:<name> (only a header Envoy sets itself)
//! maxBodyBytes: 1048576                 # the largest body a chain accepts (413 / 502 past it)
//! reloadIntervalMs: 1000                # how often configFile is checked for changes
//! policyStatsIntervalMs: 1000           # how often per-policy counts go to Envoy's stats
//! envoyStats: true                      # false: no Envoy stats (the module keeps its counts)
//! ```

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The keys that make the filter configuration settings rather than a route document.
const SETTINGS_KEYS: [&str; 7] = [
    "config",
    "configFile",
    "routeKey",
    "maxBodyBytes",
    "reloadIntervalMs",
    "policyStatsIntervalMs",
    "envoyStats",
];

/// Where the route key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteKey {
    /// Envoy's `xds.route_name` attribute (the route's `name`).
    RouteName,
    /// A request header; use only one Envoy sets itself, since clients can send any header.
    Header(String),
}

/// Where the route configuration comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The document, inline in Envoy's configuration.
    Inline(Value),
    /// A file, checked for changes every `interval` and reloaded when it changes.
    File { path: PathBuf, interval: Duration },
}

/// The module's settings for one filter configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The route configuration.
    pub source: Source,
    /// Where the route key comes from.
    pub route_key: RouteKey,
    /// The largest request or response body a chain accepts.
    pub max_body_bytes: usize,
    /// How often a policy's counts are added to Envoy's stats (at most; with its next run).
    pub policy_stats_interval: Duration,
    /// Whether the module defines and records Envoy stats.
    pub envoy_stats: bool,
}

/// Why a filter configuration was refused (Envoy then refuses the listener update).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// Not YAML or JSON.
    #[error("the module's filter_config is not YAML: {0}")]
    Syntax(String),
    /// A settings key has the wrong type or value.
    #[error("the module's filter_config field `{field}` {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    /// Both or neither of `config` and `configFile` in the settings form.
    #[error(
        "the module's filter_config names no route configuration: give `config` (inline) or `configFile` (a path), not both"
    )]
    NoSource,
    /// A key the settings form does not have.
    #[error(
        "the module's filter_config has an unknown settings key `{0}` (known: config, configFile, routeKey, maxBodyBytes, reloadIntervalMs, policyStatsIntervalMs, envoyStats)"
    )]
    UnknownKey(String),
}

impl Settings {
    /// Reads Envoy's `filter_config` string.
    ///
    /// # Errors
    /// Text that is not YAML, or settings that are wrong; route documents are checked later, by
    /// the core.
    pub fn parse(text: &str) -> Result<Settings, SettingsError> {
        let value: Value =
            serde_saphyr::from_str(text).map_err(|e| SettingsError::Syntax(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Ok(Settings::inline(value));
        };
        if !map.keys().any(|k| SETTINGS_KEYS.contains(&k.as_str())) {
            return Ok(Settings::inline(value));
        }
        if let Some(unknown) = map.keys().find(|k| !SETTINGS_KEYS.contains(&k.as_str())) {
            return Err(SettingsError::UnknownKey(unknown.clone()));
        }
        let interval = Duration::from_millis(number(
            map.get("reloadIntervalMs"),
            "reloadIntervalMs",
            1000,
        )?);
        let source = match (map.get("config"), map.get("configFile")) {
            (Some(doc), None) => Source::Inline(doc.clone()),
            (None, Some(Value::String(path))) if !path.is_empty() => Source::File {
                path: PathBuf::from(path),
                interval,
            },
            (None, Some(_)) => {
                return Err(SettingsError::Field {
                    field: "configFile",
                    problem: "must be a file path".to_owned(),
                });
            }
            _ => return Err(SettingsError::NoSource),
        };
        let route_key = match map.get("routeKey") {
            None => RouteKey::RouteName,
            Some(Value::String(key)) => route_key(key)?,
            Some(_) => {
                return Err(SettingsError::Field {
                    field: "routeKey",
                    problem: "must be a string".to_owned(),
                });
            }
        };
        let max = number(
            map.get("maxBodyBytes"),
            "maxBodyBytes",
            DEFAULT_MAX_BODY as u64,
        )?;
        let stats = match map.get("policyStatsIntervalMs") {
            // 0 is allowed here: every run goes to Envoy at once.
            Some(Value::Number(n)) if n.as_u64() == Some(0) => 0,
            other => number(other, "policyStatsIntervalMs", 1000)?,
        };
        let envoy_stats = match map.get("envoyStats") {
            None => true,
            Some(Value::Bool(on)) => *on,
            Some(_) => {
                return Err(SettingsError::Field {
                    field: "envoyStats",
                    problem: "must be true or false".to_owned(),
                });
            }
        };
        Ok(Settings {
            source,
            route_key,
            max_body_bytes: usize::try_from(max).unwrap_or(usize::MAX),
            policy_stats_interval: Duration::from_millis(stats),
            envoy_stats,
        })
    }

    fn inline(document: Value) -> Settings {
        Settings {
            source: Source::Inline(document),
            route_key: RouteKey::RouteName,
            max_body_bytes: DEFAULT_MAX_BODY,
            policy_stats_interval: Duration::from_secs(1),
            envoy_stats: true,
        }
    }
}

/// The default body limit, as the engine's.
const DEFAULT_MAX_BODY: usize = 1024 * 1024;

fn number(value: Option<&Value>, field: &'static str, default: u64) -> Result<u64, SettingsError> {
    match value {
        None => Ok(default),
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or(SettingsError::Field {
            field,
            problem: "must be a whole number above 0".to_owned(),
        }),
    }
}

fn route_key(key: &str) -> Result<RouteKey, SettingsError> {
    match key.split_once(':') {
        Some(("attribute", "xds.route_name")) => Ok(RouteKey::RouteName),
        Some(("header", name)) if !name.is_empty() => {
            Ok(RouteKey::Header(name.to_ascii_lowercase()))
        }
        _ => Err(SettingsError::Field {
            field: "routeKey",
            problem: format!(
                "is {key:?}; use attribute:xds.route_name (the default) or header:<name>"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_route_document_is_taken_inline_with_the_defaults() {
        let s = Settings::parse("routes: {api: {policies: []}}").expect("valid");
        assert_eq!(
            s.source,
            Source::Inline(json!({"routes": {"api": {"policies": []}}}))
        );
        assert_eq!(
            (s.route_key, s.max_body_bytes),
            (RouteKey::RouteName, 1024 * 1024)
        );
    }

    #[test]
    fn settings_name_a_file_and_tune_the_host() {
        let s = Settings::parse(
            "configFile: /etc/r.yaml\nrouteKey: header:X-Route\nmaxBodyBytes: 10\nreloadIntervalMs: 50\npolicyStatsIntervalMs: 0\nenvoyStats: false",
        )
        .expect("valid");
        assert_eq!(
            (s.policy_stats_interval, s.envoy_stats),
            (Duration::ZERO, false)
        );
        assert_eq!(
            s.source,
            Source::File {
                path: "/etc/r.yaml".into(),
                interval: Duration::from_millis(50)
            }
        );
        assert_eq!(
            (s.route_key, s.max_body_bytes),
            (RouteKey::Header("x-route".into()), 10)
        );
    }

    #[test]
    fn wrong_settings_say_which_field_and_how_to_fix_it() {
        let err = |text| Settings::parse(text).expect_err("invalid").to_string();
        assert!(err("config: {}\nconfigFile: /x").contains("not both"));
        assert!(err("routeKey: attribute:request.path\nconfig: {}").contains("header:<name>"));
        assert!(err("config: {}\nmaxBodyBytes: -1").contains("maxBodyBytes"));
        assert!(err("config: {}\ncolour: red").contains("`colour`"));
        assert!(err("[unclosed").contains("not YAML"));
        assert!(err("config: {}\nenvoyStats: maybe").contains("true or false"));
    }
}
