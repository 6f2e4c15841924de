//! The process-wide `tracing` subscriber. The level comes from `RUST_LOG`
//! (default `info`). Trace correlation (trace and span ids on every line)
//! arrives with the telemetry crate.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors (the services' default).
    Json,
    /// Human-readable lines, for a terminal (the `mercato` monolith).
    Text,
}

/// Installs the global subscriber. Calling it twice is harmless (the second
/// call is ignored), which keeps tests that build several servers simple.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _already_set = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().compact()).try_init(),
    };
}
