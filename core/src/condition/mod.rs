//! CEL conditions: compiled once per snapshot, evaluated per request against lazy views of the
//! request, the response and the request's metadata.

mod values;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr};
use cel::{Env, Program, Value};
use policy_sdk::{Metadata, Request, RequestContext, Response, ResponseContext};
use std::fmt;
use std::sync::{Arc, OnceLock};
use values::Activation;

/// The variables conditions may use.
pub const VARIABLES: [&str; 4] = ["request", "response", "metadata", "source"];

/// A compiled CEL condition; `true` runs the policy, `false` skips it.
///
/// Available (names as Envoy's attributes; `docs/conditions.md` lists each with its type):
/// `request.path` (with the query), `request.url_path` (without it), `request.method`,
/// `request.host`, `request.scheme`, `request.id`, `request.headers` (lower-case names; repeated
/// values joined with `,`), `request.query` (a map of decoded parameters), `request.useragent`,
/// `request.referer`, `source.address`, `source.port`, `metadata`, and in the response phase
/// `response.code` (also `response.status`) and `response.headers`.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
}

/// Why a condition does not compile.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConditionError {
    /// Not valid CEL.
    #[error("not valid CEL: {0}")]
    Parse(String),
    /// Refers to a variable that does not exist.
    #[error("unknown variable `{0}`; conditions can use request, response, source and metadata")]
    UnknownVariable(String),
}

/// Why a condition could not be evaluated for one request (the policy is then skipped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// CEL failed at run time, e.g. a missing header or metadata key.
    #[error(transparent)]
    Execution(#[from] cel::ExecutionError),
    /// The result was not a bool.
    #[error("the condition evaluated to a {0}, not a bool")]
    NotBool(&'static str),
}

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

impl Condition {
    /// Compiles `source`.
    ///
    /// # Errors
    /// Parse errors and references to unknown variables.
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        let program = env()
            .compile(source)
            .map_err(|e| ConditionError::Parse(e.to_string()))?;
        let mut free = Vec::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        if let Some(unknown) = free.iter().find(|v| !VARIABLES.contains(v)) {
            return Err(ConditionError::UnknownVariable((*unknown).to_owned()));
        }
        Ok(Condition {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// Whether the condition reads a map entry (a header, query parameter or metadata key)
    /// without any `has()` or `in` test, so that a request without that key makes it fail at
    /// run time. A heuristic for warnings: it looks at the text, not at the types.
    pub fn may_fail_on_missing_key(&self) -> bool {
        let s = &*self.source;
        let reads_entry = [
            "headers[",
            "headers.",
            "query[",
            "query.",
            "metadata[",
            "metadata.",
        ]
        .iter()
        .any(|p| s.contains(p));
        reads_entry && !s.contains("has(") && !s.contains(" in ")
    }

    /// The request fields this condition reads whose meaning changed (`request.path` now has the
    /// query, as Envoy's attribute; `request.url_path` no longer has it), for a load warning.
    pub fn reads_changed_names(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        changed_names(self.program.expression(), &mut found);
        found
    }

    /// The CEL text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates in the request phase (`response` is undefined).
    ///
    /// # Errors
    /// Run-time CEL errors and non-bool results.
    pub fn eval_request(&self, ctx: &RequestContext) -> Result<bool, EvalError> {
        self.eval(ctx.request(), None, ctx.metadata())
    }

    /// Evaluates in the response phase.
    ///
    /// # Errors
    /// Run-time CEL errors and non-bool results.
    pub fn eval_response(&self, ctx: &ResponseContext) -> Result<bool, EvalError> {
        self.eval(ctx.request(), Some(ctx.response()), ctx.metadata())
    }

    fn eval(
        &self,
        request: &Request,
        response: Option<&Response>,
        metadata: &Metadata,
    ) -> Result<bool, EvalError> {
        let activation = Activation {
            request,
            response,
            metadata,
        };
        let mut context = cel::Context::with_env(Arc::clone(env()));
        context.set_variable_resolver(&activation);
        match self.program.execute(&context)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::NotBool(type_name(&other))),
        }
    }
}

/// Free variables of `expr`: identifiers not bound by a macro such as `exists(x, ...)`.
fn free_variables<'e>(expr: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<&'e str>) {
    let mut walk = |e: &'e IdedExpr, bound: &mut Vec<&'e str>| free_variables(e, bound, out);
    match &expr.expr {
        Expr::Ident(name) => {
            if !bound.contains(&name.as_str()) {
                walk_ident(name, out);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, bound);
            }
            call.args.iter().for_each(|a| walk(a, bound));
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound);
            walk(&c.accu_init, bound);
            let depth = bound.len();
            bound.push(&c.iter_var);
            bound.push(&c.accu_var);
            if let Some(second) = &c.iter_var2 {
                bound.push(second);
            }
            for e in [&c.loop_cond, &c.loop_step, &c.result] {
                walk(e, bound);
            }
            bound.truncate(depth);
        }
        Expr::List(list) => list.elements.iter().for_each(|e| walk(e, bound)),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        walk(&m.key, bound);
                        walk(&m.value, bound);
                    }
                    EntryExpr::StructField(f) => walk(&f.value, bound),
                }
            }
        }
        Expr::Select(select) => walk(&select.operand, bound),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// `request.path` and `request.url_path` selections anywhere in `expr`.
fn changed_names(expr: &IdedExpr, out: &mut Vec<&'static str>) {
    let mut children: Vec<&IdedExpr> = Vec::new();
    match &expr.expr {
        Expr::Select(select) => {
            if matches!(&select.operand.expr, Expr::Ident(name) if name == "request") {
                let name = match select.field.as_str() {
                    "path" => Some("request.path"),
                    "url_path" => Some("request.url_path"),
                    _ => None,
                };
                if let Some(name) = name
                    && !out.contains(&name)
                {
                    out.push(name);
                }
            }
            children.push(&select.operand);
        }
        Expr::Call(call) => {
            children.extend(call.target.as_deref());
            children.extend(call.args.iter());
        }
        Expr::Comprehension(c) => {
            children.extend([
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]);
        }
        Expr::List(list) => children.extend(list.elements.iter()),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => children.extend([&m.key, &m.value]),
                    EntryExpr::StructField(f) => children.push(&f.value),
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    for child in children {
        changed_names(child, out);
    }
}

fn walk_ident<'e>(name: &'e str, out: &mut Vec<&'e str>) {
    if !out.contains(&name) {
        out.push(name);
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Null => "null",
        _ => "value",
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

#[cfg(test)]
mod tests;
