use super::*;
use policy_sdk::{Request, RequestContext, Response, ResponseContext};

fn ctx() -> RequestContext {
    let req = Request::new("POST", "/api/users?page=2&q=a%20b")
        .with_header("X-Env", "staging")
        .with_header("user-agent", "curl/8")
        .with_client_address("10.1.2.3:5555".parse().expect("an address"))
        .with_header("accept", "a")
        .with_header("accept", "b")
        .with_authority("example.com");
    let mut ctx = RequestContext::new(req);
    ctx.metadata_mut().set("auth.user", "alice");
    ctx.metadata_mut().set("auth.level", 3);
    ctx.metadata_mut()
        .set("auth.roles", serde_json::json!(["admin", "dev"]));
    ctx
}

fn eval(source: &str) -> Result<bool, EvalError> {
    Condition::compile(source)
        .expect("compiles")
        .eval_request(&ctx())
}

#[test]
fn request_fields_headers_query_and_metadata_resolve() {
    for (source, expected) in [
        (r#"request.url_path.startsWith("/api/")"#, true),
        (r#"request.url_path == "/api/users""#, true),
        (r#"request.path == "/api/users?page=2&q=a%20b""#, true),
        (r#"request.fullPath == request.path"#, true),
        (r#"request.useragent == "curl/8""#, true),
        (
            r#"source.address == "10.1.2.3" && source.port == 5555"#,
            true,
        ),
        (r#"request.method in ["POST", "PUT", "DELETE"]"#, true),
        (r#"request.method in ["GET"]"#, false),
        (r#"request.host == "example.com""#, true),
        (r#"request.headers["x-env"] == "staging""#, true),
        (r#"request.headers["accept"] == "a,b""#, true),
        (r#""x-env" in request.headers"#, true),
        (r#""x-missing" in request.headers"#, false),
        (
            r#"request.query["q"] == "a b" && request.query["page"] == "2""#,
            true,
        ),
        (r#"metadata["auth.user"] == "alice""#, true),
        (r#"metadata["auth.level"] >= 3"#, true),
        (r#""admin" in metadata["auth.roles"]"#, true),
        (r#""auth.flag" in metadata"#, false),
    ] {
        let got = eval(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(got, expected, "{source}");
    }
}

#[test]
fn missing_keys_and_non_bool_results_are_errors() {
    assert!(matches!(
        eval(r#"request.headers["nope"] == "x""#),
        Err(EvalError::Execution(_))
    ));
    assert!(matches!(
        eval(r#"metadata["nope"]"#),
        Err(EvalError::Execution(_))
    ));
    assert!(matches!(
        eval("request.path"),
        Err(EvalError::NotBool("string"))
    ));
    // response is undefined in the request phase
    assert!(eval("response.status == 200").is_err());
}

#[test]
fn response_phase_sees_status_and_headers() {
    let (req, meta) = ctx().into_parts();
    let resp = Response::new(503).with_header("Retry-After", "5");
    let rctx = ResponseContext::new(req, resp, meta);
    let cond = Condition::compile(
        r#"response.status >= 500 && response.headers["retry-after"] == "5" && metadata["auth.user"] == "alice""#,
    )
    .expect("compiles");
    assert!(cond.eval_response(&rctx).expect("evaluates"));
}

#[test]
fn compile_rejects_bad_syntax_and_unknown_variables_but_not_macro_variables() {
    assert!(matches!(
        Condition::compile("request.path ==").err(),
        Some(ConditionError::Parse(_))
    ));
    assert_eq!(
        Condition::compile("req.path == '/'").err(),
        Some(ConditionError::UnknownVariable("req".into()))
    );
    assert!(Condition::compile("[1, 2].exists(x, x > 1) && metadata.all(k, k != '')").is_ok());
    assert_eq!(
        Condition::compile("[1].map(y, y + z) == [2]").err(),
        Some(ConditionError::UnknownVariable("z".into()))
    );
}
