//! Which policy instance a route entry gets: the running configuration's, when the entry did
//! not change, so a reload keeps the instance's state; a new one otherwise.

use policy_sdk::PolicyInstance;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// What makes two route entries the same instance: the policy, its parameters, and (unless the
/// policy is shared across routes) the route and which of that route's equal entries it is.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct InstanceKey {
    /// `None` for a policy whose instances are shared across routes.
    route: Option<Arc<str>>,
    /// `name:version`.
    policy: Arc<str>,
    /// The parameters as canonical JSON (object keys sorted).
    params: String,
    /// The 0-based count of earlier entries of this route with the same policy and parameters.
    nth: usize,
}

impl InstanceKey {
    /// The key of the first such entry of `route` (the route is ignored when `shared`).
    pub(crate) fn new(route: &str, shared: bool, policy: &Arc<str>, params: &Value) -> Self {
        InstanceKey {
            route: (!shared).then(|| route.into()),
            policy: Arc::clone(policy),
            // serde_json's maps are sorted (no `preserve_order`), so equal values print alike.
            params: params.to_string(),
            nth: 0,
        }
    }

    /// The key of the `nth` (0-based) equal entry of the same route; shared keys stay as they
    /// are, since every equal entry shares one instance.
    #[must_use]
    pub(crate) fn nth(mut self, nth: usize) -> Self {
        if self.route.is_some() {
            self.nth = nth;
        }
        self
    }
}

/// The instances of one snapshot, by key.
#[derive(Debug, Default)]
pub(crate) struct Instances {
    by_key: HashMap<InstanceKey, PolicyInstance>,
    kept: usize,
}

impl Instances {
    /// The instance for `key`: one already built for this snapshot, else the running
    /// snapshot's (kept), else `build()`'s, recorded under `key`. `None` when `build` fails.
    pub(crate) fn get_or_build(
        &mut self,
        key: InstanceKey,
        running: Option<&Instances>,
        build: impl FnOnce() -> Option<PolicyInstance>,
    ) -> Option<PolicyInstance> {
        if let Some(instance) = self.by_key.get(&key) {
            return Some(instance.clone());
        }
        let instance = match running.and_then(|r| r.by_key.get(&key)) {
            Some(kept) => {
                self.kept += 1;
                kept.clone()
            }
            None => build()?,
        };
        self.by_key.insert(key, instance.clone());
        Some(instance)
    }

    /// Starts every instance not started yet.
    pub(crate) fn start(&self) {
        self.by_key.values().for_each(PolicyInstance::start);
    }

    /// How many instances, and how many of them the running snapshot had.
    pub(crate) fn counts(&self) -> InstanceCounts {
        InstanceCounts {
            total: self.by_key.len(),
            kept: self.kept,
        }
    }
}

/// How many policy instances a snapshot holds, and how many it kept from the configuration it
/// replaced (their state carried over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// Every instance.
    pub total: usize,
    /// Those taken over from the running configuration.
    pub kept: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_compare_parameters_by_value_and_routes_unless_shared() {
        let p: Arc<str> = "p:1.0.0".into();
        let params = json!({"b": 1, "a": [2, {"y": 1, "x": 0}]});
        let a = InstanceKey::new("r", false, &p, &params);
        let b = InstanceKey::new("r", false, &p, &json!({"a": [2, {"x": 0, "y": 1}], "b": 1}));
        assert_eq!(a, b, "object key order does not matter");
        assert_ne!(a, InstanceKey::new("other", false, &p, &params));
        assert_ne!(a, InstanceKey::new("r", false, &p, &params).nth(1));
        assert_eq!(
            InstanceKey::new("r", true, &p, &json!({})).nth(3),
            InstanceKey::new("s", true, &p, &json!({})),
            "shared policies ignore the route and the occurrence"
        );
    }

    #[test]
    fn running_instances_are_kept_and_counted() {
        let p: Arc<str> = "p:1.0.0".into();
        let key = |n| InstanceKey::new("r", false, &p, &json!({"n": n}));
        let mut running = Instances::default();
        let first = running
            .get_or_build(key(1), None, || Some(PolicyInstance::new()))
            .expect("built");
        let mut next = Instances::default();
        let kept = next
            .get_or_build(key(1), Some(&running), || panic!("must be kept"))
            .expect("kept");
        assert!(kept.same_as(&first));
        let fresh = next
            .get_or_build(key(2), Some(&running), || Some(PolicyInstance::new()))
            .expect("built");
        assert!(!fresh.same_as(&first));
        assert!(next.get_or_build(key(3), Some(&running), || None).is_none());
        assert_eq!(next.counts(), InstanceCounts { total: 2, kept: 1 });
    }
}
