//! Decision tests: cases (a route, a request, optionally the upstream's response) with the
//! result a route configuration must give them, run in-process through the same executor every
//! host runs, with coverage of the routes and policy entries the cases reached.
//!
//! ```yaml
//! config: routes.yaml            # relative to this file
//! cases:
//!   - name: no key, no entry
//!     route: private
//!     request: {method: GET, path: /orders, headers: {x-api-key: wrong}}
//!     expect: {status: 403, headers: {content-type: application/json}}
//!   - name: a valid key reaches upstream as acme
//!     route: private
//!     request: {path: /orders, headers: {x-api-key: test}}
//!     expect:
//!       upstream: {headers: {x-api-key: null}}   # null: removed
//!       metadata: {auth.consumer: acme}
//! ```

mod compare;
mod file;

pub use compare::{Message, Mismatch, Outcome};
pub use file::{
    Case, DecisionFile, Expect, ExpectResponse, ExpectUpstream, FileError, TestRequest,
    TestResponse,
};

use crate::chain::{Decision, Trace};
use crate::rescue::{Failure, rescue};
use crate::snapshot::Snapshot;
use policy_sdk::{Request, RequestContext, Response, ResponseContext};
use std::collections::BTreeSet;

/// What one case did.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Its route.
    pub route: String,
    /// What happened, as compared.
    pub actual: Outcome,
    /// Every difference from the expectation (empty: passed).
    pub mismatches: Vec<Mismatch>,
    /// The chain's explain trace, request then response phase.
    pub trace: String,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// A policy entry of a route: `(route, phase, name:version, position in the phase)`.
pub type Entry = (String, &'static str, String, usize);

/// Which routes and policy entries the cases reached.
#[derive(Debug, Default)]
pub struct Coverage {
    /// Every route of the configuration.
    pub routes: BTreeSet<String>,
    /// Routes some case used.
    pub routes_hit: BTreeSet<String>,
    /// Every policy entry.
    pub entries: BTreeSet<Entry>,
    /// Entries that ran for some case (skipped by a condition or not reached does not count).
    pub entries_hit: BTreeSet<Entry>,
}

impl Coverage {
    /// Every route and entry of `snapshot`, none hit yet.
    pub fn of(snapshot: &Snapshot) -> Coverage {
        let mut coverage = Coverage::default();
        for route in snapshot.route_names() {
            coverage.routes.insert(route.to_owned());
            if let Some(chain) = snapshot.route(route) {
                for (i, step) in chain.request_steps().iter().enumerate() {
                    coverage.entries.insert((
                        route.to_owned(),
                        "request",
                        step.key().to_owned(),
                        i,
                    ));
                }
                for (i, step) in chain.response_steps().iter().enumerate() {
                    coverage.entries.insert((
                        route.to_owned(),
                        "response",
                        step.key().to_owned(),
                        i,
                    ));
                }
            }
        }
        coverage
    }

    /// The share of policy entries that ran, in percent (100 with no entries, when every route
    /// was hit).
    pub fn percent(&self) -> f64 {
        let total = self.entries.len() + self.empty_routes().count();
        if total == 0 {
            return 100.0;
        }
        let empty_hit = self
            .empty_routes()
            .filter(|r| self.routes_hit.contains(*r))
            .count();
        (self.entries_hit.len() + empty_hit) as f64 * 100.0 / total as f64
    }

    /// Routes without policy entries (they count once each).
    fn empty_routes(&self) -> impl Iterator<Item = &String> {
        self.routes
            .iter()
            .filter(|r| !self.entries.iter().any(|(route, ..)| route == *r))
    }

    /// Routes no case used.
    pub fn routes_missed(&self) -> Vec<&str> {
        self.routes
            .difference(&self.routes_hit)
            .map(String::as_str)
            .collect()
    }

    /// Entries that never ran.
    pub fn entries_missed(&self) -> Vec<&Entry> {
        self.entries.difference(&self.entries_hit).collect()
    }

    fn record(&mut self, route: &str, phase: &'static str, trace: &Trace) {
        for (i, (key, what)) in trace.entries().iter().enumerate() {
            if what != "not run" && !what.starts_with("skipped") {
                self.entries_hit
                    .insert((route.to_owned(), phase, key.to_string(), i));
            }
        }
    }
}

/// Runs one case against `snapshot` (as a host would: the route's chain, or the configuration's
/// unknown-route answer), recording what it reached in `coverage`.
pub async fn run_case(snapshot: &Snapshot, case: &Case, coverage: &mut Coverage) -> CaseResult {
    let request = case.request.to_request();
    let mut ctx = RequestContext::new(request);
    for (key, value) in &case.request.metadata {
        ctx.metadata_mut().set(key.clone(), value.clone());
    }
    let Some(chain) = snapshot.chain_for(&case.route) else {
        let answer = rescue(
            Failure::UnknownRoute(case.route.clone()),
            &case.route,
            "decision-test",
        );
        let actual = Outcome::answered(&answer, ctx.metadata());
        return finish(case, actual, String::new());
    };
    coverage.routes_hit.insert(chain.route().to_owned());
    let mut trace = Trace::default();
    let decision = chain.run_request_traced(&mut ctx, Some(&mut trace)).await;
    coverage.record(chain.route(), "request", &trace);
    let mut explain = trace.render();
    let actual = match decision {
        Decision::Respond(answer) => Outcome::answered(&answer, ctx.metadata()),
        Decision::Deny(denial) => {
            let answer = rescue(Failure::Denied(denial), chain.route(), "decision-test");
            Outcome::answered(&answer, ctx.metadata())
        }
        Decision::Continue => {
            let mut actual = Outcome::forwarded(&ctx);
            if let Some(upstream) = &case.response {
                let (request, metadata) = ctx.into_parts();
                let mut ctx = ResponseContext::new(request, upstream.to_response(), metadata);
                let mut trace = Trace::default();
                let decision = chain.run_response_traced(&mut ctx, Some(&mut trace)).await;
                coverage.record(chain.route(), "response", &trace);
                explain = format!("{explain} | response: {}", trace.render());
                let client = match decision {
                    Decision::Continue => Outcome::response_of(ctx.response()),
                    Decision::Respond(answer) => Outcome::response_of(&answer_response(&answer)),
                    Decision::Deny(denial) => Outcome::response_of(&answer_response(&rescue(
                        Failure::Denied(denial),
                        chain.route(),
                        "decision-test",
                    ))),
                };
                actual.response = Some(client);
                actual.metadata = ctx.metadata().clone();
            }
            actual
        }
    };
    finish(case, actual, explain)
}

fn answer_response(answer: &policy_sdk::ImmediateResponse) -> Response {
    let mut response = Response::new(answer.status()).with_body(answer.body().to_vec());
    for (name, value) in answer.headers() {
        response = response.with_header(name.clone(), value.clone());
    }
    response
}

fn finish(case: &Case, actual: Outcome, trace: String) -> CaseResult {
    CaseResult {
        name: case.name.clone(),
        route: case.route.clone(),
        mismatches: compare::compare(&case.expect, &actual),
        actual,
        trace,
    }
}

impl TestRequest {
    fn to_request(&self) -> Request {
        let mut request = Request::new(self.method.clone(), self.path.clone())
            .with_authority(self.host.clone())
            .with_scheme(self.scheme.clone())
            .with_request_id(self.id.clone());
        for (name, value) in &self.headers {
            request = request.with_header(name.to_ascii_lowercase(), value.clone());
        }
        if let Some(body) = self.body_bytes() {
            request = request.with_body(body);
        }
        if let Some(client) = self.client {
            request = request.with_client_address(client);
        }
        request
    }
}

impl TestResponse {
    fn to_response(&self) -> Response {
        let mut response = Response::new(self.status);
        for (name, value) in &self.headers {
            response = response.with_header(name.to_ascii_lowercase(), value.clone());
        }
        if let Some(body) = self.body_bytes() {
            response = response.with_body(body);
        }
        response
    }
}
