//! The policy-chain resource: a route configuration document as an xDS resource
//! (`proto/policy_engine/config/v1/policy_chain.proto`), shared by the engine's xDS client and
//! the reference control plane.

use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, ListValue, NullValue, Struct, Value};
use prost::Message;
use serde_json::Value as Json;

/// The type URL of [`PolicyChainConfig`] resources.
pub const TYPE_URL: &str = "type.googleapis.com/policy_engine.config.v1.PolicyChainConfig";

const RESOURCE_WRAPPER_URL: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// The largest route configuration document the engine accepts, in bytes (its
/// `config::MAX_DOCUMENT_BYTES`): a control plane should not serve larger ones.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Integers up to this magnitude survive the round trip through a protobuf double exactly.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// One route configuration document, named. The engine subscribes to one name.
#[derive(Clone, PartialEq, Message)]
pub struct PolicyChainConfig {
    /// The resource name (the engine's `--xds-resource`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// The document, as in file mode (`version`, `routes`, `defaults`), in its JSON form.
    #[prost(message, optional, tag = "2")]
    pub config: Option<Struct>,
}

impl PolicyChainConfig {
    /// A resource named `name` holding `document` (a JSON object).
    ///
    /// # Errors
    /// [`ResourceError::NotAnObject`] when `document` is not an object.
    pub fn from_json(name: &str, document: &Json) -> Result<Self, ResourceError> {
        match json_to_value(document).kind {
            Some(Kind::StructValue(config)) => Ok(PolicyChainConfig {
                name: name.to_owned(),
                config: Some(config),
            }),
            _ => Err(ResourceError::NotAnObject),
        }
    }

    /// The resource packed for a `DiscoveryResponse`.
    pub fn to_any(&self) -> Any {
        Any {
            type_url: TYPE_URL.to_owned(),
            value: self.encode_to_vec(),
        }
    }

    /// Unpacks a resource of a `DiscoveryResponse`: a `PolicyChainConfig`, or one wrapped in an
    /// `envoy.service.discovery.v3.Resource` (whose name is used when the inner one is empty).
    ///
    /// # Errors
    /// [`ResourceError`] for another type or bytes that do not decode.
    pub fn from_any(any: &Any) -> Result<Self, ResourceError> {
        if any.type_url == RESOURCE_WRAPPER_URL {
            let wrapper = Resource::decode(any.value.as_slice())?;
            let inner = wrapper.resource.ok_or(ResourceError::EmptyWrapper)?;
            let mut config = Self::from_any(&inner)?;
            if config.name.is_empty() {
                config.name = wrapper.name;
            }
            return Ok(config);
        }
        if any.type_url != TYPE_URL {
            return Err(ResourceError::WrongType(any.type_url.clone()));
        }
        Ok(Self::decode(any.value.as_slice())?)
    }

    /// The document as JSON, ready for the engine's `load_value`. Whole numbers come back as
    /// integers (protobuf carries every number as a double).
    ///
    /// # Errors
    /// [`ResourceError`] when the document is missing or holds a value JSON cannot carry.
    pub fn document(&self) -> Result<Json, ResourceError> {
        let config = self.config.as_ref().ok_or(ResourceError::NoDocument)?;
        struct_to_json(config, "")
    }
}

/// Why a resource could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The resource is of another type.
    #[error("resource type {0:?} is not {TYPE_URL}")]
    WrongType(String),
    /// The bytes are not the message the type URL names.
    #[error("the resource does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A `Resource` wrapper without a resource.
    #[error("an envoy.service.discovery.v3.Resource wrapper holds no resource")]
    EmptyWrapper,
    /// The resource has no `config` field.
    #[error("the resource has no config document")]
    NoDocument,
    /// A document that is not a JSON object.
    #[error("the document must be an object (version, routes, defaults)")]
    NotAnObject,
    /// A value JSON cannot represent.
    #[error("{path}: {message}")]
    Value {
        /// Where in the document, e.g. `routes[0].policies[1].params.limit`.
        path: String,
        /// What is wrong.
        message: &'static str,
    },
}

fn struct_to_json(fields: &Struct, path: &str) -> Result<Json, ResourceError> {
    // Sorted, so the first error reported is the same every time.
    let mut entries: Vec<(&String, &Value)> = fields.fields.iter().collect();
    entries.sort_unstable_by_key(|(key, _)| *key);
    let mut object = serde_json::Map::with_capacity(entries.len());
    for (key, value) in entries {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        object.insert(key.clone(), value_to_json(value, &child)?);
    }
    Ok(Json::Object(object))
}

fn value_to_json(value: &Value, path: &str) -> Result<Json, ResourceError> {
    let invalid = |message| ResourceError::Value {
        path: path.to_owned(),
        message,
    };
    Ok(match &value.kind {
        None => return Err(invalid("a value without a kind")),
        Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            number(*n).ok_or_else(|| invalid("NaN or infinite number"))?
        }
        Some(Kind::StructValue(s)) => struct_to_json(s, path)?,
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn number(n: f64) -> Option<Json> {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: |n| <= 2^53 is representable in i64 without rounding.
        #[allow(clippy::cast_possible_truncation)]
        return Some(Json::from(n as i64));
    }
    serde_json::Number::from_f64(n).map(Json::Number)
}

fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(NullValue::NullValue.into()),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_round_trip_with_integers_kept_whole() {
        let document = json!({
            "version": "v1",
            "routes": [{"route": "api", "policies": [{
                "name": "rate-limit", "version": "1.0.0", "enabled": true,
                "params": {"requestsPerSecond": 100, "ratio": 0.5, "tags": ["a", null]}
            }]}]
        });
        let resource = PolicyChainConfig::from_json("edge", &document).expect("an object");
        let unpacked = PolicyChainConfig::from_any(&resource.to_any()).expect("decodes");
        assert_eq!(unpacked.name, "edge");
        let back = unpacked.document().expect("JSON");
        assert_eq!(back, document);
        assert!(back["routes"][0]["policies"][0]["params"]["requestsPerSecond"].is_u64());
    }

    #[test]
    fn wrapped_resources_take_the_wrapper_name() {
        let inner = PolicyChainConfig::from_json("", &json!({"version": "v1"})).expect("object");
        let wrapper = Resource {
            name: "outer".into(),
            version: "7".into(),
            resource: Some(inner.to_any()),
            ..Resource::default()
        };
        let any = Any {
            type_url: RESOURCE_WRAPPER_URL.into(),
            value: wrapper.encode_to_vec(),
        };
        assert_eq!(
            PolicyChainConfig::from_any(&any).expect("unwraps").name,
            "outer"
        );
    }

    #[test]
    fn bad_resources_say_what_is_wrong() {
        let other = Any {
            type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
            value: vec![],
        };
        assert!(matches!(
            PolicyChainConfig::from_any(&other),
            Err(ResourceError::WrongType(_))
        ));
        let garbage = Any {
            type_url: TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(matches!(
            PolicyChainConfig::from_any(&garbage),
            Err(ResourceError::Decode(_))
        ));
        assert!(matches!(
            PolicyChainConfig::from_json("x", &json!([1])),
            Err(ResourceError::NotAnObject)
        ));
        assert!(matches!(
            PolicyChainConfig::default().document(),
            Err(ResourceError::NoDocument)
        ));
        let mut nan =
            PolicyChainConfig::from_json("x", &json!({"routes": [{"n": 1}]})).expect("object");
        if let Some(Kind::ListValue(list)) = nan
            .config
            .as_mut()
            .and_then(|c| c.fields.get_mut("routes"))
            .and_then(|v| v.kind.as_mut())
            && let Some(Kind::StructValue(route)) = list.values[0].kind.as_mut()
        {
            route.fields.insert(
                "n".into(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            );
        }
        let error = nan.document().expect_err("NaN is not JSON");
        assert_eq!(
            error.to_string(),
            "routes[0].n: NaN or infinite number",
            "the path names the value"
        );
    }
}

#[cfg(test)]
mod proto_file {
    /// The published `.proto` and the Rust message must describe the same wire format.
    #[test]
    fn the_published_proto_matches_the_message() {
        let proto = include_str!("../proto/policy_engine/config/v1/policy_chain.proto");
        let (package, message) = super::TYPE_URL
            .trim_start_matches("type.googleapis.com/")
            .rsplit_once('.')
            .expect("package.Message");
        assert!(proto.contains(&format!("package {package};")));
        assert!(proto.contains(&format!("message {message} {{")));
        assert!(proto.contains("  string name = 1;"));
        assert!(proto.contains("  google.protobuf.Struct config = 2;"));
        let fields = proto
            .lines()
            .filter(|l| {
                l.starts_with("  ") && !l.trim_start().starts_with("//") && l.contains(" = ")
            })
            .count();
        assert_eq!(fields, 2, "two fields, as in the message");
    }
}
