//! The Redis store against a real `redis-server`, driven by the SDK's plain executor (no async
//! runtime of the caller's: the store brings its own).
#![allow(
    clippy::disallowed_methods,
    reason = "the test waits for a restarted server on its own thread"
)]

use counter_store::{Bucket, RedisParams, RedisStore, StoreError, StoreParams};
use policy_sdk::testkit::block_on;
use policy_test_support::redis::RedisServer;
use std::time::{Duration, Instant};

fn store(url: &str, timeout_ms: u64) -> std::sync::Arc<RedisStore> {
    let params: StoreParams =
        serde_json::from_value(serde_json::json!({"redis": {"url": url, "timeoutMs": timeout_ms}}))
            .expect("valid store");
    let StoreParams::Redis(params) = params else {
        panic!("a Redis store")
    };
    RedisStore::shared(&params, "store.redis").expect("a store")
}

#[test]
fn buckets_are_shared_by_key_and_refill_on_the_servers_clock() {
    let server = RedisServer::start();
    let store = store(&server.url(), 1000);
    let take = |key: &str| block_on(store.take_token(key.into(), 2.0, 3)).expect("Redis answers");
    for remaining in [2, 1, 0] {
        assert_eq!(take("a"), Bucket::Allowed { remaining });
    }
    let Bucket::Limited { retry_after } = take("a") else {
        panic!("the fourth request is over the burst")
    };
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500),
        "{retry_after:?}: a token comes every 0.5 s"
    );
    assert_eq!(
        take("b"),
        Bucket::Allowed { remaining: 2 },
        "keys are separate"
    );
    assert_eq!(server.keys(), 2, "one hash per bucket");
    assert_eq!(store.errors(), 0);
}

#[test]
fn windows_add_up_and_expire_when_told() {
    let server = RedisServer::start();
    let store = store(&server.url(), 1000);
    let keys = || vec!["w:consumer".to_owned(), "w:consumer:model".to_owned()];
    assert_eq!(block_on(store.totals(keys())).expect("MGET"), [0, 0]);
    let far = 4_000_000_000_000; // Unix ms, in 2096
    assert_eq!(block_on(store.add(keys(), 7, far)).expect("INCRBY"), [7, 7]);
    assert_eq!(
        block_on(store.add(keys()[..1].to_vec(), 5, far)).expect("INCRBY"),
        [12]
    );
    assert_eq!(block_on(store.totals(keys())).expect("MGET"), [12, 7]);
    let ttl = server.query(&["PTTL", "w:consumer"]).expect("PTTL");
    assert!(
        ttl.starts_with(':') && ttl != ":-1",
        "the key expires: {ttl}"
    );
    // A past expiry deletes the key at once.
    block_on(store.add(keys(), 1, 1_000)).expect("INCRBY");
    assert_eq!(server.keys(), 0);
}

#[test]
fn an_outage_fails_fast_and_the_store_recovers_without_a_restart() {
    let mut server = RedisServer::start();
    let store = store(&server.url(), 200);
    assert!(block_on(store.take_token("k".into(), 1.0, 5)).is_ok());
    server.stop();
    let started = Instant::now();
    let error = block_on(store.take_token("k".into(), 1.0, 5)).expect_err("Redis is down");
    assert!(
        matches!(error, StoreError::Redis(_) | StoreError::Timeout(_)),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(store.errors() >= 1);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match block_on(store.take_token("k".into(), 1.0, 5)) {
            Ok(bucket) => {
                assert_eq!(
                    bucket,
                    Bucket::Allowed { remaining: 4 },
                    "a fresh server, a full bucket"
                );
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_urls_and_timeouts_name_their_field_and_never_echo_the_password() {
    let params = |v: serde_json::Value| -> RedisParams {
        serde_json::from_value(v).expect("the shape is right")
    };
    for (p, field) in [
        (
            params(serde_json::json!({"url": "http://user:s3cret@host"})),
            "store.redis.url",
        ),
        (
            params(serde_json::json!({"url": "rediss://:s3cret@host/#insecure"})),
            "store.redis.url",
        ),
        (
            params(serde_json::json!({"url": "redis://host", "timeoutMs": 0})),
            "store.redis.timeoutMs",
        ),
    ] {
        let error = RedisStore::shared(&p, "store.redis").expect_err("rejected");
        assert_eq!(error.field(), Some(field), "{error}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(!format!("{p:?}").contains("s3cret"));
    }
}
