//! The engine's xDS client against the reference control plane, both real, over loopback TCP
//! (plaintext and mutual TLS). The through-Envoy scenarios are in `tests/e2e/tests/xds.rs`.

use policy_control_plane::{Event, EventSink, Options, serve};
use policy_core::Registry;
use policy_ext_proc::server::EngineState;
use policy_ext_proc::xds::{Backoff, NodeIdentity, Subscription, XdsOptions, XdsTls, run};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct ControlPlane {
    address: String,
    events: Arc<Mutex<Vec<Event>>>,
    dir: PathBuf,
    _server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    async fn start(name: &str, tls: bool) -> ControlPlane {
        let dir = std::env::temp_dir().join(format!("cp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs");
        let options = Options {
            dir: dir.clone(),
            listen: "127.0.0.1:0".into(),
            poll_interval_ms: 20,
            tls_cert: tls.then(|| certs.join("server.pem")),
            tls_key: tls.then(|| certs.join("server.key")),
            tls_client_ca: tls.then(|| certs.join("ca.pem")),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = Arc::clone(&events);
            Arc::new(move |e: &Event| events.lock().expect("lock").push(e.clone()))
        };
        let server = tokio::spawn(async move {
            serve(&options, listener, sink, std::future::pending())
                .await
                .expect("serve");
        });
        ControlPlane {
            address,
            events,
            dir,
            _server: server,
        }
    }

    fn write(&self, file: &str, text: &str) {
        let staged = self.dir.join(".staged");
        std::fs::write(&staged, text).expect("write");
        std::fs::rename(&staged, self.dir.join(file)).expect("rename");
    }

    async fn wait_for_event(&self, what: &str, pick: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.events.lock().expect("lock").iter().find(|e| pick(e)) {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event; events: {:?}",
                self.events.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn engine(options: &XdsOptions, resource: &str) -> Arc<EngineState> {
    let state = EngineState::new();
    let node = NodeIdentity {
        id: "engine-under-test".into(),
        cluster: "edge".into(),
    };
    let subscription = Subscription::new(
        resource,
        node,
        Arc::new(Registry::new()),
        Arc::clone(&state),
    );
    let endpoint = options.endpoint().expect("valid options");
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    tokio::spawn(run(endpoint, subscription, backoff));
    state
}

fn plain(address: &str) -> XdsOptions {
    XdsOptions {
        server: format!("http://{address}"),
        tls: XdsTls::default(),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    }
}

async fn wait_for_routes(state: &EngineState, routes: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let current = state.current();
        let names: Vec<String> = current
            .as_ref()
            .map(|s| s.route_names().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        if names == routes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "routes {names:?}, expected {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn routes(names: &[&str]) -> String {
    let mut text = "version: v1\nroutes:\n".to_owned();
    for name in names {
        text.push_str(&format!("  - route: {name}\n    policies: []\n"));
    }
    text
}

#[tokio::test]
async fn pushes_apply_and_invalid_ones_are_nacked_with_the_report() {
    let cp = ControlPlane::start("push", false).await;
    cp.write("other.yaml", &routes(&["not-mine"]));
    let state = engine(&plain(&cp.address), "main");
    let connected = cp
        .wait_for_event("connected", |e| matches!(e, Event::Connected { .. }))
        .await;
    assert_eq!(
        connected,
        Event::Connected {
            node: "engine-under-test".into(),
            cluster: "edge".into(),
            resources: vec!["main".into()],
            version: String::new(),
        }
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!state.is_ready(), "not ready before the resource exists");

    cp.write("main.yaml", &routes(&["a"]));
    wait_for_routes(&state, &["a"]).await;
    cp.write("main.yaml", &routes(&["a", "b"]));
    wait_for_routes(&state, &["a", "b"]).await;
    let Event::Ack { version: good, .. } = cp
        .wait_for_event(
            "second ack",
            |e| matches!(e, Event::Ack { nonce, .. } if nonce == "2"),
        )
        .await
    else {
        unreachable!()
    };

    cp.write(
        "main.yaml",
        "version: v1\nroutes:\n  - route: c\n    policies: [{name: nope, version: 9.9.9}]\n",
    );
    let nack = cp
        .wait_for_event("nack", |e| matches!(e, Event::Nack { .. }))
        .await;
    let Event::Nack { error, kept, .. } = nack else {
        unreachable!()
    };
    assert_eq!(kept, good, "the NACK names the version still applied");
    assert!(error.contains("routes[0].policies[0]"), "{error}");
    assert!(error.contains("nope"), "{error}");
    wait_for_routes(&state, &["a", "b"]).await;
}

#[tokio::test]
async fn mutual_tls_to_the_control_plane() {
    let cp = ControlPlane::start("tls", true).await;
    cp.write("main.yaml", &routes(&["secure"]));
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs");
    let port = cp.address.rsplit_once(':').expect("port").1;
    let tls = |client: bool| XdsOptions {
        server: format!("https://localhost:{port}"),
        tls: XdsTls {
            ca: Some(certs.join("ca.pem")),
            cert: client.then(|| certs.join("client.pem")),
            key: client.then(|| certs.join("client.key")),
        },
        ..plain(&cp.address)
    };
    let without_client_cert = engine(&tls(false), "main");
    let with_client_cert = engine(&tls(true), "main");
    wait_for_routes(&with_client_cert, &["secure"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !without_client_cert.is_ready(),
        "the control plane requires a client certificate"
    );
    let plaintext = engine(&plain(&cp.address), "main");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!plaintext.is_ready(), "no plaintext to a TLS control plane");
}

#[test]
fn bad_client_settings_are_refused_at_start_up() {
    let mut options = plain("127.0.0.1:1");
    options.server = "127.0.0.1:1".into();
    let error = options.endpoint().expect_err("no scheme").to_string();
    assert!(error.contains("--xds-server"), "{error}");

    let mut options = plain("127.0.0.1:1");
    options.tls.ca = Some("ca.pem".into());
    let error = options
        .endpoint()
        .expect_err("TLS files on http")
        .to_string();
    assert!(error.contains("https://"), "{error}");

    let mut options = plain("127.0.0.1:1");
    options.server = "https://localhost:1".into();
    options.tls.cert = Some("client.pem".into());
    let error = options
        .endpoint()
        .expect_err("cert without key")
        .to_string();
    assert!(error.contains("--xds-key"), "{error}");

    options.tls.key = Some("client.key".into());
    let error = options.endpoint().expect_err("missing file").to_string();
    assert!(error.contains("client.pem"), "{error}");
}
