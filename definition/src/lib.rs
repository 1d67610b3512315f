//! `policy-definition.yaml`: the model, the schema it must pass, and parameter checking. Shared
//! by the builder (which checks policy crates) and the engine (which compiles routes against
//! the definitions of its compiled-in policies), so both enforce the same format.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

/// The JSON Schema every `policy-definition.yaml` must pass (draft 2020-12).
pub const DEFINITION_SCHEMA: &str = include_str!("../schema/policy-definition.schema.json");

/// One policy version as its `policy-definition.yaml` declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDefinition {
    /// Name routes refer to the policy by.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// What the policy does.
    pub description: String,
    /// The phases the policy runs in.
    pub phases: Vec<Phase>,
    /// Whether the policy needs the request body.
    #[serde(default)]
    pub requires_request_body: bool,
    /// Whether the policy needs the response body.
    #[serde(default)]
    pub requires_response_body: bool,
    /// JSON Schema of the route-level parameters.
    #[serde(default = "no_parameters")]
    pub parameters: Value,
}

/// A processing phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The request on its way upstream.
    Request,
    /// The response on its way to the client.
    Response,
}

impl Phase {
    /// `request` or `response`, as definitions, logs and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn no_parameters() -> Value {
    serde_json::json!({"type": "object", "additionalProperties": false})
}

/// Why a definition was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    /// The document does not pass the definition schema; one entry per problem.
    #[error("{}", bullet_list(.0))]
    Invalid(Vec<String>),
    /// `parameters` is not a usable JSON Schema.
    #[error("parameters is not a valid JSON Schema: {0}")]
    ParametersSchema(String),
}

fn bullet_list(items: &[String]) -> String {
    items.join("; ")
}

impl PolicyDefinition {
    /// Parses and checks a `policy-definition.yaml` document against [`DEFINITION_SCHEMA`].
    ///
    /// # Errors
    /// [`DefinitionError::Yaml`] for unparsable text, [`DefinitionError::Invalid`] listing every
    /// schema violation.
    pub fn from_yaml(text: &str) -> Result<Self, DefinitionError> {
        let doc: Value =
            serde_saphyr::from_str(text).map_err(|e| DefinitionError::Yaml(Box::new(e)))?;
        let problems: Vec<String> = definition_validator()
            .iter_errors(&doc)
            .map(|e| {
                let at = pointer_to_path(e.instance_path().as_str());
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(DefinitionError::Invalid(problems));
        }
        serde_json::from_value(doc).map_err(|e| DefinitionError::Invalid(vec![e.to_string()]))
    }

    /// `name:version`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }

    /// Whether the policy runs in `phase`.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// Compiles `parameters` into a validator for route parameters.
    ///
    /// # Errors
    /// [`DefinitionError::ParametersSchema`] when `parameters` is not a valid JSON Schema.
    pub fn params_schema(&self) -> Result<ParamsSchema, DefinitionError> {
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&self.parameters)
            .map_err(|e| {
                let at = pointer_to_path(e.instance_path().as_str());
                DefinitionError::ParametersSchema(if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at parameters.{at}: {e}")
                })
            })?;
        let mut secret_fields = BTreeSet::new();
        collect_secret_fields(&self.parameters, &mut secret_fields);
        Ok(ParamsSchema {
            validator,
            secret_fields,
        })
    }
}

fn definition_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(DEFINITION_SCHEMA)
            .expect("the embedded definition schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the embedded definition schema is valid")
    })
}

/// A compiled parameter schema.
pub struct ParamsSchema {
    validator: jsonschema::Validator,
    secret_fields: BTreeSet<String>,
}

impl fmt::Debug for ParamsSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParamsSchema")
            .field("secret_fields", &self.secret_fields)
            .finish_non_exhaustive()
    }
}

/// One way route parameters break their schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where, as `field.sub[0].x`; empty for the parameters object itself.
    pub path: String,
    /// What is wrong, with the offending value unless the field is secret (`writeOnly`).
    pub message: String,
}

impl ParamsSchema {
    /// Every violation of the schema by `params` (none when valid).
    pub fn check(&self, params: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(params)
            .map(|e| {
                let pointer = e.instance_path().as_str();
                let secret = pointer
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| self.secret_fields.contains(&unescape(last)));
                let message = if secret {
                    e.masked().to_string()
                } else {
                    e.to_string()
                };
                Violation {
                    path: pointer_to_path(pointer),
                    message,
                }
            })
            .collect()
    }

    /// Names of fields marked `writeOnly: true` (secrets: never shown in errors or dumps).
    pub fn secret_fields(&self) -> &BTreeSet<String> {
        &self.secret_fields
    }
}

fn collect_secret_fields(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, sub) in props {
                    if sub.get("writeOnly") == Some(&Value::Bool(true)) {
                        out.insert(name.clone());
                    }
                }
            }
            map.values().for_each(|v| collect_secret_fields(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_secret_fields(v, out)),
        _ => {}
    }
}

/// `/a/0/b` -> `a[0].b`.
pub(crate) fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = unescape(segment);
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "name: rate-limit\nversion: 1.2.0\ndescription: Limits requests.\n\
        phases: [request]\nparameters:\n  type: object\n  required: [requestsPerSecond]\n  \
        properties:\n    requestsPerSecond: {type: number, exclusiveMinimum: 0}\n    \
        key: {type: string, writeOnly: true, minLength: 8}\n";

    #[test]
    fn a_valid_definition_parses_with_defaults() {
        let def = PolicyDefinition::from_yaml(VALID).expect("valid");
        assert_eq!(def.key(), "rate-limit:1.2.0");
        assert!(def.has_phase(Phase::Request) && !def.has_phase(Phase::Response));
        assert!(!def.requires_request_body);
    }

    #[test]
    fn every_schema_violation_is_listed() {
        let err = PolicyDefinition::from_yaml(
            "name: Bad_Name\nversion: one\nphases: [sideways]\nextra: 1\n",
        )
        .expect_err("invalid");
        let DefinitionError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        let text = problems.join("\n");
        for expected in ["name", "version", "phases[0]", "description", "extra"] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }

    #[test]
    fn parameters_must_be_a_valid_schema() {
        let def = PolicyDefinition::from_yaml(
            "name: x\nversion: 1.0.0\ndescription: d\nphases: [request]\n\
             parameters: {type: object, properties: {a: {type: 12}}}\n",
        )
        .expect("passes the definition schema");
        let err = def.params_schema().expect_err("type: 12 is not a schema");
        assert!(
            err.to_string()
                .starts_with("parameters is not a valid JSON Schema"),
            "{err}"
        );
    }

    #[test]
    fn violations_name_the_field_and_hide_secret_values() {
        let schema = PolicyDefinition::from_yaml(VALID)
            .expect("valid")
            .params_schema()
            .expect("schema");
        let v = schema.check(&serde_json::json!({"requestsPerSecond": -3, "key": "hunter2"}));
        assert_eq!(v.len(), 2, "{v:?}");
        let rps = v
            .iter()
            .find(|v| v.path == "requestsPerSecond")
            .expect("rps violation");
        assert!(rps.message.contains("-3"), "{}", rps.message);
        let key = v.iter().find(|v| v.path == "key").expect("key violation");
        assert!(
            !key.message.contains("hunter2"),
            "secret leaked: {}",
            key.message
        );
    }

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/a/0/b~1c"), "a[0].b/c");
    }
}
