//! Telemetry for every mercato process. One job: make each call observable —
//! in logs, in a tracing backend and on a dashboard.
//!
//! - [`init`] installs the process-wide `tracing` subscriber: JSON lines on
//!   stdout carrying `trace_id`, `span_id` and `request_id` (or compact text
//!   for a terminal), and OpenTelemetry spans, exported over OTLP/gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set — and only then made at all: the
//!   ids of a call without spans live in its [`CallContext`]. It returns
//!   [`Telemetry`], whose [`Telemetry::shutdown`] flushes what is still
//!   batched.
//! - [`grpc`]: tower layers for tonic servers and clients. They carry the W3C
//!   trace context and `x-request-id` across processes, open one span per
//!   call, and keep the grpc-ecosystem Prometheus metrics
//!   (`grpc_server_handled_total`, `grpc_server_handling_seconds`, …).

mod call;
mod filter;
mod logs;
mod propagation;
mod traces;

pub mod grpc;

use serde::{Deserialize, Serialize};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

pub use call::{CallContext, in_call};
pub use logs::{JsonFormat, LogFormat};
pub use traces::export_enabled;

/// Variables read straight from the environment, besides the settings:
/// the log filter and the Kubernetes downward-API names of the span resource.
pub const READ_FROM_ENVIRONMENT: &[&str] = &["RUST_LOG", "POD_NAME", "POD_NAMESPACE", "NODE_NAME"];

/// Families of variables read by the OpenTelemetry SDK and exporter.
pub const READ_FROM_ENVIRONMENT_PREFIXES: &[&str] = &["OTEL_"];

/// How a process logs. The environment variables are `LOG_LEVEL` and
/// `LOG_FORMAT`; `RUST_LOG`, when set, wins over `LOG_LEVEL`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive: `info`, `warn,mercato_order=debug`, …
    pub log_level: String,
    /// `json` (services) or `text` (a terminal).
    pub log_format: LogFormat,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Json,
        }
    }
}

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting so
/// batched spans are exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the span exporter (a no-op without one).
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The batch processor blocks while it flushes; keep runtime threads free.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Installs logging and tracing for the process `service` (its
/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise). Call it once,
/// inside the Tokio runtime (the OTLP exporter's channel lives on it); a
/// second call leaves the first subscriber in place.
pub fn init(service: &'static str, settings: &TelemetrySettings) -> Telemetry {
    let events = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, export) = traces::provider(service);
    // Spans are made only when they leave the process, and then at INFO
    // whatever the log level, so traces stay whole when an operator
    // quietens the logs. Without an exporter the OpenTelemetry layer is
    // not installed and no span callsite is ever enabled (see `call`).
    let otel = matches!(export, traces::Export::Otlp).then(|| {
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, service);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_level(false)
            .with_target(false)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let gate = filter::Gate {
        spans: if otel.is_some() {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        },
        events,
    };
    let output = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(JsonFormat)
            .with_ansi(false)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };
    let _already_set = tracing_subscriber::registry()
        .with(gate)
        .with(otel)
        .with(output)
        .try_init();
    match export {
        traces::Export::Off => {}
        traces::Export::Otlp => tracing::info!(service, "exporting spans over OTLP/gRPC"),
        traces::Export::Failed(error) => {
            tracing::warn!(%error, "cannot build the OTLP span exporter; spans are not exported")
        }
    }
    Telemetry { provider }
}
