//! What the control plane reports: one JSON line per event on stdout, so operators and tests can
//! follow every push, ACK and NACK.

use serde_json::json;
use std::sync::Arc;

/// Where events go.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The control plane accepts streams.
    Listening {
        /// The bound address.
        address: String,
    },
    /// A resource has a new version (a file was added or changed).
    Loaded {
        /// The resource name.
        resource: String,
        /// Its new version.
        version: String,
    },
    /// A file could not be served (its previous version, if any, still is).
    FileError {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
    /// An engine opened a stream and subscribed.
    Connected {
        /// Its `node.id`.
        node: String,
        /// Its `node.cluster`.
        cluster: String,
        /// The resources it asked for (empty: all).
        resources: Vec<String>,
        /// The version it says it already holds.
        version: String,
    },
    /// A response went out.
    Sent {
        /// The engine.
        node: String,
        /// The response's version.
        version: String,
        /// The response's nonce.
        nonce: String,
        /// The resources in it.
        resources: Vec<String>,
    },
    /// The engine applied a response.
    Ack {
        /// The engine.
        node: String,
        /// The version it applied.
        version: String,
        /// The nonce it answered.
        nonce: String,
    },
    /// The engine rejected a response and kept its previous configuration.
    Nack {
        /// The engine.
        node: String,
        /// The version rejected.
        version: String,
        /// The version the engine still runs.
        kept: String,
        /// The nonce it answered.
        nonce: String,
        /// The engine's report (`error_detail.message`).
        error: String,
    },
    /// A stream ended.
    Disconnected {
        /// The engine.
        node: String,
    },
}

impl Event {
    /// The event as one JSON object with an `event` field naming its kind.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Event::Listening { address } => json!({"event": "listening", "address": address}),
            Event::Loaded { resource, version } => {
                json!({"event": "loaded", "resource": resource, "version": version})
            }
            Event::FileError { file, error } => {
                json!({"event": "file_error", "file": file, "error": error})
            }
            Event::Connected {
                node,
                cluster,
                resources,
                version,
            } => {
                json!({"event": "connected", "node": node, "cluster": cluster, "resources": resources, "version": version})
            }
            Event::Sent {
                node,
                version,
                nonce,
                resources,
            } => {
                json!({"event": "sent", "node": node, "version": version, "nonce": nonce, "resources": resources})
            }
            Event::Ack {
                node,
                version,
                nonce,
            } => json!({"event": "ack", "node": node, "version": version, "nonce": nonce}),
            Event::Nack {
                node,
                version,
                kept,
                nonce,
                error,
            } => {
                json!({"event": "nack", "node": node, "version": version, "kept": kept, "nonce": nonce, "error": error})
            }
            Event::Disconnected { node } => json!({"event": "disconnected", "node": node}),
        }
    }
}

/// A sink printing each event as a JSON line on stdout.
pub fn stdout_sink() -> EventSink {
    Arc::new(|event: &Event| println!("{}", event.to_json()))
}
