//! The state-of-the-world subscription to one policy-chain resource: what to ask for, and how
//! to answer each `DiscoveryResponse` (apply whole and ACK, or keep the last good config and
//! NACK). No transport here; [`super::client`] moves the messages.

use crate::state::EngineState;
use crate::{Registry, load_value};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use policy_xds_types::{PolicyChainConfig, TYPE_URL};
use std::sync::Arc;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
/// The longest NACK report sent back; the full report is in the engine's log.
const MAX_ERROR_DETAIL_BYTES: usize = 16 * 1024;

/// What the engine says about itself to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `node.id`, unique per engine instance.
    pub id: String,
    /// `node.cluster`, the group of engines that share configuration.
    pub cluster: String,
}

/// What a response did.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// The resource was valid and is now active (ACK sent).
    Applied {
        /// The response's `version_info`.
        version: String,
    },
    /// The version is the one already active; nothing was rebuilt (ACK sent).
    Unchanged {
        /// The response's `version_info`.
        version: String,
    },
    /// The update was rejected whole; the last good configuration stays (NACK sent).
    Rejected {
        /// The rejected `version_info`.
        version: String,
        /// The readable report, as in file mode.
        report: String,
    },
    /// A response for another resource type: not answered.
    Ignored {
        /// Its type URL.
        type_url: String,
    },
}

/// One engine's subscription; lives across reconnects so the applied version carries over.
#[derive(Debug)]
pub struct Subscription {
    resource: String,
    node: NodeIdentity,
    registry: Arc<Registry>,
    state: Arc<EngineState>,
    applied_version: String,
}

impl Subscription {
    /// A subscription to the resource `resource`, installing what it gets into `state`.
    pub fn new(
        resource: impl Into<String>,
        node: NodeIdentity,
        registry: Arc<Registry>,
        state: Arc<EngineState>,
    ) -> Self {
        Subscription {
            resource: resource.into(),
            node,
            registry,
            state,
            applied_version: String::new(),
        }
    }

    /// The version last applied (empty before the first).
    pub fn applied_version(&self) -> &str {
        &self.applied_version
    }

    /// The first request of a stream: the node, the resource, and the version already held
    /// (so a control plane can tell a resubscription from a fresh start).
    pub fn initial_request(&self) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(Node {
                id: self.node.id.clone(),
                cluster: self.node.cluster.clone(),
                user_agent_name: "policy-engine".into(),
                user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").into(),
                )),
                ..Node::default()
            }),
            ..self.request(self.applied_version.clone(), String::new(), None)
        }
    }

    /// Handles one response: the answer to send (none for another type) and what happened.
    /// Decoding and compiling run on a background thread, off the threads serving requests.
    pub async fn handle(
        &mut self,
        response: DiscoveryResponse,
    ) -> (Option<DiscoveryRequest>, Update) {
        if response.type_url != TYPE_URL {
            return (
                None,
                Update::Ignored {
                    type_url: response.type_url,
                },
            );
        }
        let version = response.version_info.clone();
        let nonce = response.nonce.clone();
        if !version.is_empty() && version == self.applied_version {
            let ack = self.request(version.clone(), nonce, None);
            return (Some(ack), Update::Unchanged { version });
        }
        let (resource, registry, state) = (
            self.resource.clone(),
            Arc::clone(&self.registry),
            Arc::clone(&self.state),
        );
        let applied = crate::background::run("config-compile", move || {
            apply(&resource, &response, &registry, &state)
        })
        .await
        .unwrap_or_else(|panic| Err(format!("compiling the configuration failed: {panic}")));
        match applied {
            Ok(()) => {
                self.applied_version = version.clone();
                let ack = self.request(version.clone(), nonce, None);
                (Some(ack), Update::Applied { version })
            }
            Err(report) => {
                self.state.rejected("xds");
                let nack = self.request(
                    self.applied_version.clone(),
                    nonce,
                    Some(Status {
                        code: INVALID_ARGUMENT,
                        message: truncate(&report, MAX_ERROR_DETAIL_BYTES),
                        details: Vec::new(),
                    }),
                );
                (Some(nack), Update::Rejected { version, report })
            }
        }
    }

    fn request(
        &self,
        version_info: String,
        response_nonce: String,
        error_detail: Option<Status>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info,
            resource_names: vec![self.resource.clone()],
            type_url: TYPE_URL.into(),
            response_nonce,
            error_detail,
            ..DiscoveryRequest::default()
        }
    }
}

/// Finds the subscribed resource in `response`, compiles it whole (keeping the running
/// configuration's unchanged policy instances) and installs it.
fn apply(
    name: &str,
    response: &DiscoveryResponse,
    registry: &Registry,
    state: &EngineState,
) -> Result<(), String> {
    let mut found = Vec::new();
    let mut others = Vec::new();
    for (i, any) in response.resources.iter().enumerate() {
        let resource =
            PolicyChainConfig::from_any(any).map_err(|e| format!("resources[{i}]: {e}"))?;
        if resource.name == name {
            found.push(resource);
        } else {
            others.push(resource.name);
        }
    }
    let resource = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(format!(
                "the response holds no resource named {name:?} (it holds {others:?})"
            ));
        }
        n => return Err(format!("the response holds {n} resources named {name:?}")),
    };
    let source = format!("xds resource {name:?} version {:?}", response.version_info);
    let document = resource.document().map_err(|e| format!("{source}: {e}"))?;
    let running = state.current();
    let snapshot = load_value(document, &source, registry, running.as_deref())
        .map_err(|e| e.to_string())?
        .with_origin("xds", response.version_info.clone());
    let counts = snapshot.instance_counts();
    tracing::debug!(
        instances = counts.total,
        kept = counts.kept,
        "xDS configuration compiled"
    );
    state.install(snapshot);
    Ok(())
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (truncated; the engine's log has the whole report)",
        &text[..end]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription() -> (Subscription, Arc<EngineState>) {
        let state = EngineState::new();
        let node = NodeIdentity {
            id: "engine-1".into(),
            cluster: "edge".into(),
        };
        let sub = Subscription::new("main", node, Arc::new(Registry::new()), Arc::clone(&state));
        (sub, state)
    }

    fn response(
        version: &str,
        nonce: &str,
        documents: &[(&str, serde_json::Value)],
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: TYPE_URL.into(),
            resources: documents
                .iter()
                .map(|(name, doc)| {
                    PolicyChainConfig::from_json(name, doc)
                        .expect("object")
                        .to_any()
                })
                .collect(),
            ..DiscoveryResponse::default()
        }
    }

    fn routes(names: &[&str]) -> serde_json::Value {
        json!({"version": "v1", "routes": names.iter().map(|r| json!({"route": r, "policies": []})).collect::<Vec<_>>()})
    }

    #[test]
    fn the_first_request_names_the_node_resource_and_type() {
        let (sub, _) = subscription();
        let first = sub.initial_request();
        let node = first.node.expect("node on the first request");
        assert_eq!(
            (node.id.as_str(), node.cluster.as_str()),
            ("engine-1", "edge")
        );
        assert_eq!(first.resource_names, ["main"]);
        assert_eq!(first.type_url, TYPE_URL);
        assert_eq!(
            (first.version_info.as_str(), first.response_nonce.as_str()),
            ("", "")
        );
    }

    #[tokio::test]
    async fn valid_updates_are_applied_and_acked_with_version_and_nonce() {
        let (mut sub, state) = subscription();
        let (ack, update) = sub
            .handle(response(
                "v7",
                "n1",
                &[("other", routes(&["x"])), ("main", routes(&["a", "b"]))],
            ))
            .await;
        assert_eq!(
            update,
            Update::Applied {
                version: "v7".into()
            }
        );
        let ack = ack.expect("an answer");
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("v7", "n1")
        );
        assert!(ack.error_detail.is_none() && ack.node.is_none());
        assert_eq!(
            state.current().expect("installed").route_names(),
            ["a", "b"]
        );
        assert_eq!(
            sub.initial_request().version_info,
            "v7",
            "a resubscription says what it holds"
        );

        let (ack, update) = sub
            .handle(response("v7", "n2", &[("main", routes(&["a", "b"]))]))
            .await;
        assert_eq!(
            update,
            Update::Unchanged {
                version: "v7".into()
            }
        );
        assert_eq!(ack.expect("ack").response_nonce, "n2");
    }

    #[tokio::test]
    async fn invalid_updates_are_nacked_whole_and_the_last_good_config_stays() {
        let (mut sub, state) = subscription();
        sub.handle(response("1", "n1", &[("main", routes(&["a"]))]))
            .await;
        let unknown_policy = json!({"version": "v1", "routes": [
            {"route": "b", "policies": []},
            {"route": "c", "policies": [{"name": "nope", "version": "1.0.0"}]}
        ]});
        let cases = [
            response("2", "n2", &[("main", unknown_policy)]),
            response(
                "3",
                "n3",
                &[("main", json!({"version": "v1", "routez": []}))],
            ),
            response("4", "n4", &[("other", routes(&["x"]))]),
            response(
                "5",
                "n5",
                &[("main", routes(&["x"])), ("main", routes(&["y"]))],
            ),
        ];
        let expected = [
            "routes[1].policies[0]",
            "unknown field `routez`",
            "no resource named \"main\"",
            "2 resources named \"main\"",
        ];
        for (response, expected) in cases.into_iter().zip(expected) {
            let nonce = response.nonce.clone();
            let (nack, update) = sub.handle(response).await;
            let Update::Rejected { report, .. } = update else {
                panic!("rejected: {update:?}")
            };
            assert!(report.contains(expected), "{expected:?} in {report}");
            let nack = nack.expect("a NACK");
            assert_eq!(
                nack.version_info, "1",
                "a NACK names the version still applied"
            );
            assert_eq!(nack.response_nonce, nonce);
            let detail = nack.error_detail.expect("error_detail");
            assert_eq!(detail.code, INVALID_ARGUMENT);
            assert_eq!(detail.message, report);
            assert_eq!(state.current().expect("kept").route_names(), ["a"]);
        }
        assert_eq!(sub.applied_version(), "1");
    }

    #[tokio::test]
    async fn other_types_are_ignored_and_long_reports_truncated() {
        let (mut sub, _) = subscription();
        let (answer, update) = sub
            .handle(DiscoveryResponse {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                ..DiscoveryResponse::default()
            })
            .await;
        assert!(answer.is_none());
        assert!(matches!(update, Update::Ignored { .. }));
        let long = "é".repeat(MAX_ERROR_DETAIL_BYTES);
        let cut = truncate(&long, MAX_ERROR_DETAIL_BYTES);
        assert!(cut.len() < MAX_ERROR_DETAIL_BYTES + 100 && cut.ends_with("whole report)"));
    }
}
