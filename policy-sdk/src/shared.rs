//! Process-wide resources that outlive a policy instance.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

type Entries = HashMap<(TypeId, String), Weak<dyn Any + Send + Sync>>;

/// Every live resource, by type and key. Entries are weak: a resource lives as long as some
/// instance holds it, and dead entries are pruned as new ones arrive, so the store never grows
/// past (about twice) the resources in use.
struct Store {
    entries: Entries,
    prune_at: usize,
}

const FIRST_PRUNE: usize = 64;

static STORE: LazyLock<Mutex<Store>> = LazyLock::new(|| {
    Mutex::new(Store {
        entries: HashMap::new(),
        prune_at: FIRST_PRUNE,
    })
});

fn store() -> std::sync::MutexGuard<'static, Store> {
    STORE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn live<T: Send + Sync + 'static>(entries: &Entries, id: &(TypeId, String)) -> Option<Arc<T>> {
    entries.get(id)?.upgrade()?.downcast::<T>().ok()
}

/// The resource of type `T` under `key`, made by `init` when no live one exists.
///
/// For state that should outlive one policy instance: a reload that changes a route entry's
/// parameters builds a new instance, and one that asks for the same resource gets the one
/// the old instance holds (a JWKS cache keyed by its URL and settings keeps the keys it
/// fetched). Instances of any route, policy or version that ask for the same `T` and `key`
/// share one value; it is dropped when the last instance holding it is.
///
/// Put everything the resource's behaviour depends on into `key`: two callers with the same
/// key get the same value whatever their `init` would have made. Call it from
/// [`Policy::new`](crate::Policy::new) (it does no I/O: `init` should not either), and keep
/// the `Arc` in the instance. `init` runs without a lock held; when two callers race, one
/// value wins and both get it.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Hits(AtomicU64);
///
/// let a: Arc<Hits> = policy_sdk::shared_resource("https://idp.example/jwks", || Hits(AtomicU64::new(0)));
/// a.0.fetch_add(1, Ordering::Relaxed);
/// let b: Arc<Hits> = policy_sdk::shared_resource("https://idp.example/jwks", || Hits(AtomicU64::new(0)));
/// assert_eq!(b.0.load(Ordering::Relaxed), 1, "the same value while one is held");
/// drop((a, b));
/// let c: Arc<Hits> = policy_sdk::shared_resource("https://idp.example/jwks", || Hits(AtomicU64::new(0)));
/// assert_eq!(c.0.load(Ordering::Relaxed), 0, "a fresh one once none was held");
/// ```
pub fn shared_resource<T: Send + Sync + 'static>(key: &str, init: impl FnOnce() -> T) -> Arc<T> {
    let id = (TypeId::of::<T>(), key.to_owned());
    if let Some(found) = live::<T>(&store().entries, &id) {
        return found;
    }
    let made = Arc::new(init());
    let mut store = store();
    if let Some(found) = live::<T>(&store.entries, &id) {
        return found;
    }
    let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(&made) as _;
    store.entries.insert(id, weak);
    if store.entries.len() >= store.prune_at {
        store.entries.retain(|_, weak| weak.strong_count() > 0);
        store.prune_at = (store.entries.len() * 2).max(FIRST_PRUNE);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_keys_separate_resources_and_dead_entries_are_pruned() {
        let a: Arc<String> = shared_resource("prune-test", || "a".to_owned());
        let n: Arc<u32> = shared_resource("prune-test", || 7);
        assert_eq!(
            (a.as_str(), *n),
            ("a", 7),
            "same key, other type: its own value"
        );
        let other: Arc<String> = shared_resource("prune-test-2", || "b".to_owned());
        assert_eq!(other.as_str(), "b");
        for i in 0..1000 {
            let _gone: Arc<u64> = shared_resource(&format!("prune-test-{i}"), || 0);
        }
        let len = store().entries.len();
        assert!(len < 200, "dead entries are pruned: {len} left");
        let again: Arc<String> = shared_resource("prune-test", || "new".to_owned());
        assert!(Arc::ptr_eq(&a, &again), "live entries survive pruning");
    }
}
