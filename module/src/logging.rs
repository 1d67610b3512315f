//! The module's log lines go through Envoy's own logger (component `dynamic_modules`), so they
//! share its format, destination and level (`--component-log-level dynamic_modules:info`).
//! `POLICY_MODULE_LOG` (in `tracing`'s directive syntax, `info` unless set) filters them first.

use std::io::Write;
use tracing_subscriber::fmt::MakeWriter;

/// Envoy's log callback: a level (`tracing`'s) and one line.
pub(crate) type Sink = fn(tracing::Level, &str);

/// Installs the subscriber once per process, writing through `sink`; a second module or a host
/// that has one keeps it.
pub(crate) fn init(sink: Sink) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POLICY_MODULE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(EnvoyLog(sink))
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .try_init();
}

/// Makes one [`Line`] per event, at the event's level.
struct EnvoyLog(Sink);

impl<'a> MakeWriter<'a> for EnvoyLog {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            sink: self.0,
            level: tracing::Level::INFO,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            sink: self.0,
            level: *meta.level(),
            text: Vec::new(),
        }
    }
}

/// One formatted event, handed to Envoy when the formatter is done with it.
struct Line {
    sink: Sink,
    level: tracing::Level,
    text: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim_end();
        if !text.is_empty() {
            (self.sink)(self.level, text);
        }
    }
}
