//! A reload keeps the policy instances whose entries did not change (with their state), builds
//! new ones for the rest, and starts each instance once, only when installed.

use policy_test_support::policies as support;

use policy_core::{InstanceCounts, Registry, Snapshot, load_keeping};
use policy_sdk::{Request, RequestContext};
use support::registry;

fn compile(registry: &Registry, running: Option<&Snapshot>, yaml: &str) -> Snapshot {
    load_keeping(yaml, "test.yaml", registry, running).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `route` once; what its counter said: requests seen, times started.
async fn count(snapshot: &Snapshot, route: &str) -> (u64, u64) {
    let chain = snapshot.chain_for(route).expect("the route");
    let mut ctx = RequestContext::new(Request::new("GET", "/"));
    let decision = chain.run_request(&mut ctx).await;
    assert!(
        matches!(decision, policy_core::Decision::Continue),
        "{decision:?}"
    );
    let headers = ctx.request().headers();
    let read = |name: &str| -> u64 {
        headers
            .get(name)
            .and_then(|v| v.parse().ok())
            .expect("a counter ran")
    };
    (read("x-count"), read("x-started"))
}

fn doc(routes: &[(&str, &str)]) -> String {
    let mut out = String::from("version: v1\nroutes:\n");
    for (route, policies) in routes {
        out.push_str(&format!("  - route: {route}\n    policies: [{policies}]\n"));
    }
    out
}

const A: &str = "{name: counter, version: 1.0.0, params: {tag: a}}";
const B: &str = "{name: counter, version: 1.0.0, params: {tag: b}}";

#[tokio::test]
async fn unchanged_entries_keep_their_instance_and_state_changed_ones_start_fresh() {
    let registry = registry();
    let first = compile(&registry, None, &doc(&[("r1", A), ("r2", A)]));
    first.start_policies();
    assert_eq!(count(&first, "r1").await, (1, 1));
    assert_eq!(count(&first, "r1").await, (2, 1));
    assert_eq!(count(&first, "r2").await, (1, 1), "one instance per route");

    // r2 changes; r1 (with a condition added, which is not the instance's business) does not.
    let yaml = doc(&[("r2", B), ("r1", A)]).replace(
        "params: {tag: a}}]",
        "params: {tag: a}, condition: \"true\"}]",
    );
    let second = compile(&registry, Some(&first), &yaml);
    assert_eq!(
        second.instance_counts(),
        InstanceCounts { total: 2, kept: 1 }
    );
    second.start_policies();
    assert_eq!(
        count(&second, "r1").await,
        (3, 1),
        "kept: the count goes on and it is not started again"
    );
    assert_eq!(count(&second, "r2").await, (1, 1), "new params: fresh");

    // Reordering a route's entries keeps each one's instance; equal entries stay apart.
    let pair = format!("{A}, {B}");
    let third = compile(&registry, Some(&second), &doc(&[("r1", &pair)]));
    assert_eq!(
        third.instance_counts(),
        InstanceCounts { total: 2, kept: 1 }
    );
    let swapped = format!("{B}, {A}, {A}");
    let fourth = compile(&registry, Some(&third), &doc(&[("r1", &swapped)]));
    assert_eq!(
        fourth.instance_counts(),
        InstanceCounts { total: 3, kept: 2 },
        "the second `a` entry of r1 is a new instance"
    );
}

#[tokio::test]
async fn instances_start_only_when_installed_and_validation_starts_none() {
    let registry = registry();
    let checked = compile(&registry, None, &doc(&[("r1", A)]));
    assert_eq!(count(&checked, "r1").await, (1, 0), "compiled, not started");
    // A rejected document built (and dropped) instances without starting them; the running
    // snapshot's stay as they were.
    let running = compile(&registry, None, &doc(&[("r1", A)]));
    running.start_policies();
    let rejected = load_keeping(
        &doc(&[("r1", A), ("r2", "{name: counter, version: 9.9.9}")]),
        "test.yaml",
        &registry,
        Some(&running),
    );
    assert!(rejected.is_err());
    assert_eq!(count(&running, "r1").await, (1, 1));
}

#[tokio::test]
async fn policies_that_allow_it_share_one_instance_across_routes() {
    let registry = registry();
    let shared = "{name: shared-counter, version: 1.0.0, params: {tag: a}}";
    let yaml = doc(&[("r1", shared), ("r2", shared), ("r3", A), ("r4", A)]);
    let snapshot = compile(&registry, None, &yaml);
    assert_eq!(
        snapshot.instance_counts(),
        InstanceCounts { total: 3, kept: 0 },
        "r1 and r2 share; r3 and r4 (not shareable) do not"
    );
    snapshot.start_policies();
    assert_eq!(count(&snapshot, "r1").await, (1, 1));
    assert_eq!(count(&snapshot, "r2").await, (2, 1), "the same instance");
    let moved = compile(
        &registry,
        Some(&snapshot),
        &doc(&[("other", shared), ("r3", A)]),
    );
    assert_eq!(
        moved.instance_counts(),
        InstanceCounts { total: 2, kept: 2 }
    );
    assert_eq!(count(&moved, "other").await, (3, 1));
}
