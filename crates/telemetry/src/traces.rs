//! The OpenTelemetry tracer provider: resource attributes from the
//! environment, and the OTLP exporter only when an endpoint is configured.

use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// True when spans leave the process: an OTLP endpoint is set
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says no.
pub fn export_enabled() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && !none
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// `service.name`, `service.version` and, in Kubernetes, the pod, namespace
/// and node from the downward-API variables `POD_NAME`, `POD_NAMESPACE`,
/// `NODE_NAME`. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are
/// honoured by the SDK's own detectors.
fn resource(service: &'static str) -> Resource {
    let mut builder = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(service);
    }
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    for (variable, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ] {
        if let Ok(value) = std::env::var(variable)
            && !value.is_empty()
        {
            attributes.push(KeyValue::new(key, value));
        }
    }
    builder.with_attributes(attributes).build()
}

/// Whether spans leave the process.
pub(crate) enum Export {
    Off,
    Otlp,
    /// An endpoint is configured but the exporter could not be built.
    Failed(String),
}

/// The provider, with a batch OTLP exporter when [`export_enabled`].
pub(crate) fn provider(service: &'static str) -> (SdkTracerProvider, Export) {
    let builder = SdkTracerProvider::builder().with_resource(resource(service));
    if !export_enabled() {
        return (builder.build(), Export::Off);
    }
    // Endpoint, headers, timeout and compression come from the standard
    // OTEL_EXPORTER_OTLP_* variables; batching from OTEL_BSP_*.
    match SpanExporter::builder()
        .with_tonic()
        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
        .build()
    {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), Export::Otlp),
        Err(e) => (builder.build(), Export::Failed(e.to_string())),
    }
}
