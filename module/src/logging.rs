//! The module's log lines go to Envoy's standard error, filtered by `POLICY_MODULE_LOG`
//! (`info` unless set, in `tracing`'s directive syntax).

/// Installs the subscriber once per process; a second module or a host that has one keeps it.
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POLICY_MODULE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
