//! The resources: one per file in a directory, re-read when the files change.

use crate::events::{Event, EventSink};
use envoy_types::pb::google::protobuf::Any;
use policy_xds_types::MAX_DOCUMENT_BYTES;
use policy_xds_types::PolicyChainConfig;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One resource as served.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The content version: the first 12 hex digits of the file's SHA-256, so it changes
    /// exactly when the file does and survives restarts.
    pub version: String,
    /// The packed `PolicyChainConfig`.
    pub any: Any,
}

/// Every resource by name (the file name without its extension), sorted.
pub type Catalog = BTreeMap<String, Entry>;

/// A directory of route configuration documents (`*.yaml`, `*.yml`, `*.json`).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    sender: watch::Sender<Arc<Catalog>>,
}

impl Store {
    /// A store for `dir`, empty until [`Store::rescan`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            sender: watch::Sender::new(Arc::new(Catalog::new())),
        }
    }

    /// The catalog now and its future versions.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.sender.subscribe()
    }

    /// Re-reads the directory and publishes the catalog if any resource changed. A file that
    /// does not parse keeps its previous version served; a deleted file's resource goes away.
    pub fn rescan(&self, events: &EventSink) {
        let previous = self.sender.borrow().clone();
        let mut next = Catalog::new();
        let files = match list(&self.dir) {
            Ok(files) => files,
            Err(error) => {
                events(&Event::FileError {
                    file: self.dir.display().to_string(),
                    error,
                });
                return;
            }
        };
        for (name, path) in files {
            if next.contains_key(&name) {
                events(&Event::FileError {
                    file: path.display().to_string(),
                    error: format!("another file already defines resource {name:?}; skipped"),
                });
                continue;
            }
            match read(&name, &path, previous.get(&name)) {
                Ok(entry) => {
                    next.insert(name, entry);
                }
                Err(error) => {
                    events(&Event::FileError {
                        file: path.display().to_string(),
                        error,
                    });
                    if let Some(old) = previous.get(&name) {
                        next.insert(name, old.clone());
                    }
                }
            }
        }
        if next != *previous {
            for (name, entry) in &next {
                if previous.get(name).map(|e| &e.version) != Some(&entry.version) {
                    events(&Event::Loaded {
                        resource: name.clone(),
                        version: entry.version.clone(),
                    });
                }
            }
            self.sender.send_replace(Arc::new(next));
        }
    }

    /// Rescans every `interval` until the future is dropped.
    pub async fn watch(self, interval: Duration, events: EventSink) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.rescan(&events);
        }
    }
}

/// The documents in `dir` as `(resource name, path)`, sorted by file name; hidden entries
/// (such as Kubernetes ConfigMap `..data`) are skipped.
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading the directory: {e}"))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let file_name = path.file_name()?.to_str()?;
            if file_name.starts_with('.') || !path.is_file() {
                return None;
            }
            let (stem, ext) = file_name.rsplit_once('.')?;
            matches!(ext, "yaml" | "yml" | "json").then(|| (stem.to_owned(), path.clone()))
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

fn read(name: &str, path: &Path, previous: Option<&Entry>) -> Result<Entry, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_DOCUMENT_BYTES as u64 {
        return Err(format!(
            "{size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(&bytes);
    let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    if let Some(previous) = previous.filter(|p| p.version == version) {
        return Ok(previous.clone());
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let document: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let resource = PolicyChainConfig::from_json(name, &document).map_err(|e| e.to_string())?;
    Ok(Entry {
        version,
        any: resource.to_any(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn files_become_versioned_resources_and_bad_files_keep_the_last_good_one() {
        let dir = std::env::temp_dir().join(format!("cp-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..data")).expect("dir");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = Arc::clone(&seen);
            let sink: EventSink = Arc::new(move |e: &Event| {
                seen.lock().expect("lock").push(e.clone());
            });
            sink
        };
        std::fs::write(dir.join("edge.yaml"), "version: v1\nroutes: []\n").expect("write");
        std::fs::write(dir.join("api.json"), r#"{"version": "v1"}"#).expect("write");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("write");
        let store = Store::new(&dir);
        let mut catalog = store.subscribe();
        store.rescan(&sink);
        assert!(catalog.has_changed().expect("open"));
        let first = catalog.borrow_and_update().clone();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["api", "edge"]);
        let decoded = PolicyChainConfig::from_any(&first["edge"].any).expect("decodes");
        assert_eq!(decoded.name, "edge");

        store.rescan(&sink);
        assert!(!catalog.has_changed().expect("open"), "nothing changed");

        std::fs::write(dir.join("edge.yaml"), "version: v1\nroutes: [\n").expect("write");
        std::fs::write(dir.join("api.json"), r#"{"version": "v1", "routes": []}"#).expect("write");
        store.rescan(&sink);
        let second = catalog.borrow_and_update().clone();
        assert_eq!(
            second["edge"], first["edge"],
            "a broken file keeps its last version"
        );
        assert_ne!(second["api"].version, first["api"].version);
        let events = seen.lock().expect("lock").clone();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::FileError { file, .. } if file.ends_with("edge.yaml"))),
            "{events:?}"
        );

        std::fs::remove_file(dir.join("api.json")).expect("remove");
        store.rescan(&sink);
        assert_eq!(catalog.borrow().keys().collect::<Vec<_>>(), ["edge"]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
