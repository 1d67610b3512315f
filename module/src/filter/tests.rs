//! The filter driven through a fake Envoy: what it holds, changes, answers and counts.

use super::*;
use crate::envoy::Scheduler;
use std::cell::RefCell;
use std::sync::mpsc;

/// Envoy's side of one stream, in memory.
/// An answer Envoy was asked to send: status, headers, body.
type Sent = (u16, Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct FakeEnvoy {
    request: RefCell<Vec<(String, Vec<u8>)>>,
    response: RefCell<Vec<(String, Vec<u8>)>>,
    request_body: RefCell<Vec<u8>>,
    route: Option<String>,
    sent: RefCell<Option<Sent>>,
    resumed: RefCell<Vec<Side>>,
    rerouted: RefCell<bool>,
    woken: Option<mpsc::Sender<u64>>,
    /// Envoy refuses a new body (its buffer is gone).
    refuse_body: bool,
    /// `(stat id, label values, amount)` in the order recorded (a duration counts as 1).
    stats: RefCell<Vec<(usize, Vec<String>, u64)>>,
}

/// Stat ids by name: counters 1 and 2, the histogram 3.
struct TestStats;

impl crate::envoy::DefineStats for TestStats {
    fn counter(&self, name: &str, _: &[&str]) -> Option<usize> {
        match name {
            "policy_requests" => Some(1),
            "policy_refusals" => Some(2),
            "policy_runs" => Some(4),
            _ => None,
        }
    }
    fn histogram(&self, _: &str, _: &[&str]) -> Option<usize> {
        Some(3)
    }
}

impl FakeEnvoy {
    fn new(route: &str, headers: &[(&str, &str)]) -> FakeEnvoy {
        FakeEnvoy {
            request: RefCell::new(
                headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
            ),
            route: Some(route.to_owned()),
            ..FakeEnvoy::default()
        }
    }

    fn map(&self, side: Side) -> &RefCell<Vec<(String, Vec<u8>)>> {
        match side {
            Side::Request => &self.request,
            Side::Response => &self.response,
        }
    }

    fn header(&self, side: Side, name: &str) -> Vec<String> {
        self.map(side)
            .borrow()
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    fn sent_status(&self) -> Option<u16> {
        self.sent.borrow().as_ref().map(|(status, _, _)| *status)
    }
}

struct FakeScheduler(mpsc::Sender<u64>);

impl Scheduler for FakeScheduler {
    fn commit(&self, event: u64) {
        let _ = self.0.send(event);
    }
}

impl Envoy for FakeEnvoy {
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        self.map(side).borrow().clone()
    }
    fn set_header(&self, side: Side, name: &str, value: &[u8]) {
        self.remove_header(side, name);
        self.add_header(side, name, value);
    }
    fn add_header(&self, side: Side, name: &str, value: &[u8]) {
        self.map(side)
            .borrow_mut()
            .push((name.to_owned(), value.to_vec()));
    }
    fn remove_header(&self, side: Side, name: &str) {
        self.map(side).borrow_mut().retain(|(k, _)| k != name);
    }
    fn body(&self, _: Side) -> Vec<u8> {
        self.request_body.borrow().clone()
    }
    fn body_len(&self, _: Side) -> usize {
        self.request_body.borrow().len()
    }
    fn replace_body(&self, _: Side, body: &[u8]) -> bool {
        if self.refuse_body {
            return false;
        }
        *self.request_body.borrow_mut() = body.to_vec();
        true
    }
    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        *self.sent.borrow_mut() = Some((status, headers, body.to_vec()));
    }
    fn route_name(&self) -> Option<String> {
        self.route.clone()
    }
    fn source_address(&self) -> Option<String> {
        Some("10.1.2.3".to_owned())
    }
    fn clear_route_cache(&self) {
        *self.rerouted.borrow_mut() = true;
    }
    fn resume(&self, side: Side) {
        self.resumed.borrow_mut().push(side);
    }
    fn increment(&self, id: usize, labels: &[&str], by: u64) {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        self.stats.borrow_mut().push((id, labels, by));
    }
    fn record(&self, id: usize, labels: &[&str], value: u64) {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        self.stats.borrow_mut().push((id, labels, value.min(1)));
    }
    fn scheduler(&self) -> Box<dyn Scheduler> {
        Box::new(FakeScheduler(
            self.woken.clone().expect("a test that expects a wait"),
        ))
    }
}

fn host(routes: &str) -> Arc<Host> {
    let registry = Arc::new(policy_test_support::policies::registry());
    Host::new(registry, routes, &TestStats).unwrap_or_else(|e| panic!("{e}"))
}

const GET: [(&str, &str); 3] = [(":method", "GET"), (":path", "/a"), ("x-request-id", "r1")];

#[test]
fn a_chain_edits_both_sides_and_metadata_crosses_phases() {
    let host = host(
        "version: v1\nroutes:\n  - route: api\n    policies:\n      - {name: order, version: 1.0.0, params: {label: a}}\n      - {name: meta, version: 1.0.0, params: {key: k, value: v, header: x-meta}}\n",
    );
    let filter = Filter::new(host);
    let envoy = FakeEnvoy::new("api", &GET);
    assert_eq!(filter.on_request_headers(&envoy, true), Flow::Continue);
    assert_eq!(envoy.header(Side::Request, "x-order"), ["a"]);
    envoy
        .response
        .borrow_mut()
        .push((":status".to_owned(), b"200".to_vec()));
    assert_eq!(filter.on_response_headers(&envoy, true), Flow::Continue);
    assert_eq!(envoy.header(Side::Response, "x-order"), ["a"]);
    assert_eq!(envoy.header(Side::Response, "x-meta"), ["v"]);
    assert_eq!(envoy.sent_status(), None);
}

#[test]
fn unknown_routes_failures_and_answers_stop_the_stream() {
    let host = host(
        "version: v1\nroutes:\n  - route: fails\n    policies: [{name: fail, version: 1.0.0}]\n  - route: answers\n    policies: [{name: respond, version: 1.0.0, params: {status: 418}}]\n",
    );
    for (route, status) in [("nowhere", 403), ("fails", 500), ("answers", 418)] {
        let filter = Filter::new(Arc::clone(&host));
        let envoy = FakeEnvoy::new(route, &GET);
        assert_eq!(
            filter.on_request_headers(&envoy, true),
            Flow::Stop,
            "{route}"
        );
        assert_eq!(envoy.sent_status(), Some(status), "{route}");
    }
    // A request without :path cannot be judged: 400, nothing goes on.
    let filter = Filter::new(Arc::clone(&host));
    let envoy = FakeEnvoy::new("answers", &[(":method", "GET")]);
    assert_eq!(filter.on_request_headers(&envoy, true), Flow::Stop);
    assert_eq!(envoy.sent_status(), Some(400));
}

#[test]
fn a_waiting_chain_holds_the_stream_until_its_result_is_back_on_the_worker() {
    let host = host(
        "version: v1\nroutes:\n  - route: api\n    policies: [{name: slow, version: 1.0.0, params: {ms: 20}}]\n",
    );
    let filter = Filter::new(host);
    let (tx, rx) = mpsc::channel();
    let envoy = FakeEnvoy {
        woken: Some(tx),
        ..FakeEnvoy::new("api", &GET)
    };
    assert_eq!(filter.on_request_headers(&envoy, true), Flow::Hold);
    // Body parts arriving meanwhile are held too.
    assert_eq!(filter.on_request_body(&envoy, true), Flow::Hold);
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the runtime wakes the stream");
    filter.on_scheduled(&envoy);
    assert_eq!(*envoy.resumed.borrow(), [Side::Request]);
    assert_eq!(envoy.header(Side::Request, "x-slow"), ["done"]);
}

#[test]
fn a_body_chain_holds_the_headers_refuses_past_the_limit_and_counts_a_stream_cut_short() {
    let host = host(
        "config:\n  version: v1\n  routes:\n    - route: api\n      policies: [{name: limits, version: 1.0.0, params: {requestsPerSecond: 1}}]\nmaxBodyBytes: 8\n",
    );
    let filter = Filter::new(Arc::clone(&host));
    let envoy = FakeEnvoy::new("api", &GET);
    assert_eq!(filter.on_request_headers(&envoy, false), Flow::Hold);
    *envoy.request_body.borrow_mut() = b"1234".to_vec();
    assert_eq!(filter.on_request_body(&envoy, false), Flow::Hold);
    *envoy.request_body.borrow_mut() = b"123456789".to_vec();
    assert_eq!(filter.on_request_body(&envoy, true), Flow::Stop);
    assert_eq!(envoy.sent_status(), Some(413));

    let filter = Filter::new(host);
    let envoy = FakeEnvoy::new("api", &GET);
    assert_eq!(filter.on_request_headers(&envoy, false), Flow::Hold);
    let metrics = Arc::clone(&filter.state.borrow().metrics);
    let before = metrics.refusals(Refusal::StreamIncomplete);
    filter.on_stream_complete();
    assert_eq!(metrics.refusals(Refusal::StreamIncomplete), before + 1);
}

#[test]
fn a_new_body_envoy_does_not_take_is_refused_not_passed() {
    let mut registry = policy_test_support::policies::registry();
    registry
        .register(policy_test_support::policies::body_rewrite::policy_export())
        .expect("registers");
    let host = Host::new(
        Arc::new(registry),
        "version: v1\nroutes:\n  - route: api\n    policies: [{name: body-rewrite, version: 1.0.0}]\n",
        &TestStats,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let post = [(":method", "POST"), (":path", "/a"), ("x-request-id", "r1")];
    for refuse_body in [false, true] {
        let filter = Filter::new(Arc::clone(&host));
        let envoy = FakeEnvoy {
            refuse_body,
            ..FakeEnvoy::new("api", &post)
        };
        assert_eq!(filter.on_request_headers(&envoy, false), Flow::Hold);
        *envoy.request_body.borrow_mut() = br#"{"internal_id": 1}"#.to_vec();
        let flow = filter.on_request_body(&envoy, true);
        if refuse_body {
            assert_eq!((flow, envoy.sent_status()), (Flow::Stop, Some(500)));
        } else {
            assert_eq!((flow, envoy.sent_status()), (Flow::Continue, None));
            assert_eq!(&envoy.request_body.borrow()[..], br#"{"rewritten":true}"#);
        }
    }
}
