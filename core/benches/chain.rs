//! The in-process cost of a route's chain: 5 header-only policies, one with a CEL condition.
//!
//! `cargo bench -p policy-core --bench chain`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use policy_core::condition::Condition;
use policy_core::{Decision, Registry, load};
use policy_sdk::{
    Outcome, Policy, PolicyError, Request, RequestAction, RequestContext, RequestPolicy,
    UpstreamRequestMods,
};
use serde::Deserialize;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

mod tag {
    use super::*;

    #[derive(Deserialize)]
    pub struct Params {
        set: Option<(String, String)>,
        remove: Option<String>,
    }

    /// Sets and/or removes a header.
    pub struct Tag(Params);

    impl Policy for Tag {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Tag(p))
        }
    }

    impl RequestPolicy for Tag {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let mut mods = UpstreamRequestMods::new();
            if let Some((name, value)) = &self.0.set {
                mods = mods.set_header(name, value);
            }
            if let Some(name) = &self.0.remove {
                mods = mods.remove_header(name);
            }
            Outcome::ready(mods)
        }
    }

    policy_sdk::export_policy!(
        Tag,
        phases = [request],
        definition = "name: tag\nversion: 1.0.0\ndescription: bench\nphases: [request]\n\
                      parameters: {type: object}\n"
    );
}

const CONFIG: &str = r#"
version: v1
routes:
  - route: api
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-api-key}}
      - {name: tag, version: 1.0.0, params: {set: [x-consumer, alice]}}
      - name: tag
        version: 1.0.0
        condition: 'metadata["auth.user"] == "k-123456" && request.method in ["GET", "POST"]'
        params: {set: [x-admin, "true"]}
      - {name: tag, version: 1.0.0, params: {remove: x-api-key}}
      - {name: tag, version: 1.0.0, params: {set: [x-gateway, engine]}}
"#;

fn request() -> Request {
    Request::new("GET", "/api/v1/users?page=2")
        .with_authority("api.example.com")
        .with_scheme("https")
        .with_request_id("5f1c0d9e-4c1b-4f7a-9d7e-0a1b2c3d4e5f")
        .with_header("user-agent", "wrk/4.2")
        .with_header("accept", "application/json")
        .with_header("accept-encoding", "gzip")
        .with_header("x-api-key", "k-123456")
        .with_header("x-forwarded-for", "10.0.0.1")
        .with_header("x-forwarded-proto", "https")
        .with_header("x-request-id", "5f1c0d9e-4c1b-4f7a-9d7e-0a1b2c3d4e5f")
        .with_header("x-envoy-expected-rq-timeout-ms", "15000")
}

/// Polls a future that must complete without waiting (every policy here is synchronous).
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a synchronous chain returned Pending"),
    }
}

fn bench(c: &mut Criterion) {
    let mut registry = Registry::new();
    registry
        .register(policy_test_support::policies::require_header::policy_export())
        .expect("registers");
    registry.register(tag::policy_export()).expect("registers");
    let snapshot = load(CONFIG, "bench.yaml", &registry).expect("valid config");
    let chain = snapshot.chain_for("api").expect("route").clone();

    // Sanity: the chain does what the bench claims.
    let mut ctx = RequestContext::new(request());
    assert!(matches!(
        now(chain.run_request(&mut ctx)),
        Decision::Continue
    ));
    assert_eq!(ctx.request().header("x-admin"), Some("true"));
    assert_eq!(ctx.request().header("x-api-key"), None);

    c.bench_function("chain/5-header-policies-1-cel", |b| {
        b.iter_batched(
            || RequestContext::new(request()),
            |mut ctx| {
                let decision = now(chain.run_request(&mut ctx));
                black_box((decision, ctx))
            },
            BatchSize::SmallInput,
        )
    });

    let condition = Condition::compile(
        r#"metadata["auth.user"] == "alice" && request.method in ["GET", "POST"]"#,
    )
    .expect("compiles");
    let mut ctx = RequestContext::new(request());
    ctx.metadata_mut().set("auth.user", "alice");
    c.bench_function("condition/metadata-and-method", |b| {
        b.iter(|| black_box(condition.eval_request(black_box(&ctx))))
    });

    c.bench_function("context/build-request-context", |b| {
        b.iter(|| black_box(RequestContext::new(request())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
