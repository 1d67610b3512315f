//! File mode: load the route configuration from a file, re-read it when it changes (polled, so
//! Kubernetes ConfigMap symlink swaps work) or on SIGHUP, and keep the last good one when a new
//! version is invalid.

use crate::state::EngineState;
use crate::{Registry, load_keeping};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What one reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The new document is active.
    Applied,
    /// The file did not change since the last attempt.
    Unchanged,
    /// The document was invalid or unreadable; the previous configuration stays active.
    Rejected,
}

/// A configuration file and what was last read from it.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    registry: Arc<Registry>,
    state: Arc<EngineState>,
    last_seen: Option<u64>,
}

impl FileSource {
    /// A source for `path`; nothing is read until [`FileSource::reload`].
    pub fn new(path: impl Into<PathBuf>, registry: Arc<Registry>, state: Arc<EngineState>) -> Self {
        FileSource {
            path: path.into(),
            registry,
            state,
            last_seen: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; when its content changed (or `force`), validates it whole and swaps it in.
    pub async fn reload(&mut self, force: bool) -> Reload {
        let file = self.path.display().to_string();
        let text = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                if self.last_seen != Some(0) || force {
                    tracing::error!(file, %error, "cannot read the configuration file; keeping the last good configuration");
                }
                self.last_seen = Some(0);
                return Reload::Rejected;
            }
        };
        let digest = {
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            h.finish() | 1
        };
        if !force && self.last_seen == Some(digest) {
            return Reload::Unchanged;
        }
        self.last_seen = Some(digest);
        let Ok(text) = String::from_utf8(text) else {
            tracing::error!(
                file,
                "the configuration file is not UTF-8; keeping the last good configuration"
            );
            return Reload::Rejected;
        };
        let (registry, state, source) = (
            Arc::clone(&self.registry),
            Arc::clone(&self.state),
            file.clone(),
        );
        // Compiling a large document takes a while: never on a thread that serves requests.
        let compiled = crate::background::run("config-compile", move || {
            let running = state.current();
            let snapshot = load_keeping(&text, &source, &registry, running.as_deref())
                .map_err(|e| e.to_string())?;
            let (routes, counts) = (snapshot.route_names().len(), snapshot.instance_counts());
            state.install(snapshot);
            Ok((routes, counts))
        })
        .await
        .unwrap_or_else(|panic| Err(format!("compiling the configuration failed: {panic}")));
        match compiled {
            Ok((routes, counts)) => {
                tracing::info!(
                    file,
                    routes,
                    instances = counts.total,
                    kept = counts.kept,
                    "configuration loaded"
                );
                Reload::Applied
            }
            Err(report) => {
                self.state.rejected("file");
                tracing::error!(
                    file,
                    "configuration rejected; keeping the last good configuration:\n{report}"
                );
                Reload::Rejected
            }
        }
    }

    /// Reloads every `interval` and on SIGHUP until the returned future is dropped.
    ///
    /// The SIGHUP handler is installed when this is called (inside a Tokio runtime), not when
    /// the future first runs, so a signal sent right after start-up cannot kill the process.
    pub fn watch(mut self, interval: Duration) -> impl std::future::Future<Output = ()> {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        async move {
            loop {
                #[cfg(unix)]
                let force = match hangup.as_mut() {
                    Some(signal) => tokio::select! {
                        _ = tokio::time::sleep(interval) => false,
                        _ = signal.recv() => { tracing::info!("SIGHUP: reloading the configuration"); true }
                    },
                    None => {
                        tokio::time::sleep(interval).await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let force = {
                    tokio::time::sleep(interval).await;
                    false
                };
                self.reload(force).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "version: v1\nroutes:\n  - route: a\n    policies: []\n";

    #[tokio::test]
    async fn invalid_documents_keep_the_last_good_one_and_unchanged_files_are_skipped() {
        let dir = std::env::temp_dir().join(format!("pe-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("routes.yaml");
        let state = EngineState::new();
        let mut source = FileSource::new(&path, Arc::new(Registry::new()), Arc::clone(&state));

        assert_eq!(source.reload(false).await, Reload::Rejected, "missing file");
        assert!(!state.is_ready());

        std::fs::write(&path, VALID).expect("write");
        assert_eq!(source.reload(false).await, Reload::Applied);
        assert_eq!(source.reload(false).await, Reload::Unchanged);

        std::fs::write(
            &path,
            "version: v1\nroutes:\n  - route: b\n    policies: [{name: nope, version: 1.0.0}]\n",
        )
        .expect("write");
        assert_eq!(source.reload(false).await, Reload::Rejected);
        let current = state.current().expect("still configured");
        assert_eq!(
            current.route_names(),
            ["a"],
            "the last good configuration stays"
        );

        // A symlink swap, as Kubernetes does for ConfigMaps.
        let target = dir.join("v2.yaml");
        std::fs::write(&target, VALID.replace("route: a", "route: c")).expect("write");
        let link = dir.join("link.yaml");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &link).expect("symlink");
            let mut linked = FileSource::new(&link, Arc::new(Registry::new()), Arc::clone(&state));
            assert_eq!(linked.reload(false).await, Reload::Applied);
            assert_eq!(state.current().expect("configured").route_names(), ["c"]);
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
