//! Logs: `tracing` to stderr, text or JSON, filtered by RUST_LOG, with the
//! libraries that log protocol messages held at `error` whatever it says.

use crate::config::LogFormat;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Libraries that print protocol messages in their events: rmcp logs each
/// MCP request at debug, every message at trace, and at warn an error a
/// handler answered (an upstream's "no mailbox dana@…"), a message it did
/// not expect, or a parse error quoting the value. Those may hold personal
/// data (docs/policy.md, "Personal data"), so only their errors (transport
/// failures) are logged, whatever RUST_LOG asks; countersign logs its own
/// view of each call and outcome.
const VERBATIM: &[&str] = &["rmcp"];

/// Whether an event or span of this kind may be logged at all.
fn may_log(m: &Metadata<'_>) -> bool {
    if *m.level() == Level::ERROR {
        return true;
    }
    let target = m.target();
    !VERBATIM.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// `env` (RUST_LOG's filter) with the verbatim libraries held at `error`.
pub fn filter<S>(env: EnvFilter) -> impl Filter<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    env.and(filter_fn(may_log))
}

pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_sessions=warn,leptos=warn,tower_http=warn"));
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter(env)))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn verbatim_libraries_stay_at_error_whatever_rust_log_says() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(filter(EnvFilter::new("trace,rmcp=trace,rmcp::service=trace")));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "rmcp::service", "received request dana@example.com");
            tracing::trace!(target: "rmcp", "message dana@example.com");
            tracing::warn!(target: "rmcp::service", "response error: no mailbox dana@example.com");
            tracing::info!(target: "rmcp::service", "service initialized");
            tracing::error!(target: "rmcp::service", "transport closed");
            tracing::debug!(target: "rmcpish", "another crate's debug line");
            tracing::debug!(target: "server::mcp", "our own debug line");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("dana@example.com"), "{text}");
        assert!(!text.contains("service initialized"), "{text}");
        for line in ["transport closed", "another crate's debug line", "our own debug line"] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
