//! CEL views over the request, response and metadata: resolved on access, borrowing the data,
//! so evaluating `request.path == "/x"` copies nothing.

use cel::ExecutionError;
use cel::common::traits::{Container, Indexer};
use cel::common::types::{CelBool, CelDouble, CelInt, CelNull, CelString, CelUInt, MAP_TYPE, Type};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use policy_sdk::{HeaderMap, Metadata, Request, Response};
use std::fmt;

/// The variables a condition can use: `request`, `response` (response phase) and `metadata`.
pub(crate) struct Activation<'a> {
    pub(crate) request: &'a Request,
    pub(crate) response: Option<&'a Response>,
    pub(crate) metadata: &'a Metadata,
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "request" => Some(CowVal::owned(RequestVal(self.request))),
            "source" => Some(CowVal::owned(SourceVal(self.request))),
            "response" => self.response.map(|r| CowVal::owned(ResponseVal(r))),
            "metadata" => Some(CowVal::owned(MetadataVal(self.metadata))),
            _ => None,
        }
    }
}

/// The string key of an index or field access.
fn key(idx: &dyn Val) -> Result<&str, ExecutionError> {
    <&str>::try_from(idx).map_err(|_| ExecutionError::UnexpectedType {
        got: idx.get_type().name().to_owned(),
        want: "string".to_owned(),
    })
}

fn string<'b, 'v>(s: &'v str) -> CowVal<'b, 'v> {
    CowVal::owned(CelString::from(s))
}

/// Implements `Val` for a `Copy` view that answers field access and, optionally, `in`.
macro_rules! lazy_map {
    ($ty:ident, $name:literal $(, $container:ident)?) => {
        impl<'a> Val for $ty<'a> {
            fn get_type(&self) -> &Type {
                &MAP_TYPE
            }

            fn cel_type() -> &'static Type {
                &MAP_TYPE
            }

            fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
            where
                Self: 'v,
            {
                Some(self)
            }

            $(
                fn as_container(&self) -> Option<&dyn $container> {
                    Some(self)
                }
            )?

            fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
            where
                Self: 'v,
            {
                Box::new(*self)
            }
        }

        impl fmt::Debug for $ty<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Never the contents: they may hold credentials.
                f.write_str($name)
            }
        }
    };
}

#[derive(Clone, Copy)]
struct RequestVal<'a>(&'a Request);
lazy_map!(RequestVal, "request");

impl<'a> Indexer for RequestVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let r: &'a Request = self.0;
        Ok(match key(idx)? {
            // Envoy's attribute names: `path` with the query, `url_path` without it.
            "path" | "fullPath" => string(r.path()),
            "url_path" => string(r.path_without_query()),
            "useragent" => header(r, "user-agent")?,
            "referer" => header(r, "referer")?,
            "method" => string(r.method()),
            "host" | "authority" => string(r.authority()),
            "scheme" => string(r.scheme()),
            "id" => string(r.request_id()),
            "headers" => CowVal::owned(HeadersVal(r.headers())),
            "query" => CowVal::owned(QueryVal(r.query().unwrap_or(""))),
            other => return Err(ExecutionError::no_such_key(other)),
        })
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

/// A header's value as a string (several joined with `,`); missing: no such key.
fn header<'b, 'v>(r: &'v Request, name: &'static str) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let values: Vec<&str> = r.headers().get_all(name).collect();
    match values.as_slice() {
        [] => Err(ExecutionError::no_such_key(name)),
        [one] => Ok(string(one)),
        many => Ok(CowVal::owned(CelString::from(many.join(",")))),
    }
}

/// `source`: the client (Envoy's `source.address` and `source.port`).
#[derive(Clone, Copy)]
struct SourceVal<'a>(&'a Request);
lazy_map!(SourceVal, "source");

impl<'a> Indexer for SourceVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let field = key(idx)?;
        let Some(client) = self.0.client_address() else {
            return Err(ExecutionError::no_such_key(field));
        };
        Ok(match field {
            "address" => CowVal::owned(CelString::from(client.ip().to_string())),
            "port" => CowVal::owned(CelInt::from(i64::from(client.port()))),
            other => return Err(ExecutionError::no_such_key(other)),
        })
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

#[derive(Clone, Copy)]
struct ResponseVal<'a>(&'a Response);
lazy_map!(ResponseVal, "response");

impl<'a> Indexer for ResponseVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let r: &'a Response = self.0;
        Ok(match key(idx)? {
            "status" | "code" => CowVal::owned(CelInt::from(i64::from(r.status()))),
            "headers" => CowVal::owned(HeadersVal(r.headers())),
            other => return Err(ExecutionError::no_such_key(other)),
        })
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

/// `request.headers["x-a"]`: names are case-insensitive; several values join with `,`.
#[derive(Clone, Copy)]
struct HeadersVal<'a>(&'a HeaderMap);
lazy_map!(HeadersVal, "headers", Container);

impl<'a> Indexer for HeadersVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let headers: &'a HeaderMap = self.0;
        let name = key(idx)?;
        let mut values = headers.get_all(name);
        let first = values
            .next()
            .ok_or_else(|| ExecutionError::no_such_key(name))?;
        Ok(match values.next() {
            None => string(first),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                values.for_each(|v| {
                    joined.push(',');
                    joined.push_str(v);
                });
                CowVal::owned(CelString::from(joined))
            }
        })
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for HeadersVal<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.0.contains(key(value)?))
    }
}

/// `request.query["page"]`: the first value, percent-decoded.
#[derive(Clone, Copy)]
struct QueryVal<'a>(&'a str);
lazy_map!(QueryVal, "query", Container);

impl QueryVal<'_> {
    fn lookup(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        policy_sdk::query_param(self.0, name)
    }
}

impl<'a> Indexer for QueryVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = key(idx)?;
        let query: &'a str = self.0;
        policy_sdk::query_param(query, name)
            .map(|v| CowVal::owned(CelString::from(v)))
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for QueryVal<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.lookup(key(value)?).is_some())
    }
}

/// `metadata["auth.subject"]`: JSON values become CEL values (strings borrowed).
#[derive(Clone, Copy)]
struct MetadataVal<'a>(&'a Metadata);
lazy_map!(MetadataVal, "metadata", Container);

impl<'a> Indexer for MetadataVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let meta: &'a Metadata = self.0;
        let name = key(idx)?;
        let value = meta
            .get(name)
            .ok_or_else(|| ExecutionError::no_such_key(name))?;
        json_to_cel(value)
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for MetadataVal<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.0.contains(key(value)?))
    }
}

fn json_to_cel<'b, 'v>(value: &'v serde_json::Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => CowVal::owned(CelNull),
        J::Bool(b) => CowVal::owned(CelBool::from(*b)),
        J::String(s) => string(s),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => CowVal::owned(CelInt::from(i)),
            (None, Some(u), _) => CowVal::owned(CelUInt::from(u)),
            (_, _, f) => CowVal::owned(CelDouble::from(f.unwrap_or(f64::NAN))),
        },
        J::Array(_) | J::Object(_) => {
            let converted =
                cel::to_value(value).map_err(|e| ExecutionError::function_error("metadata", e))?;
            let boxed: Box<dyn Val> = converted
                .try_into()
                .map_err(|_| ExecutionError::function_error("metadata", "unconvertible value"))?;
            CowVal::Owned(boxed)
        }
    })
}
