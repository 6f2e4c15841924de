//! Log lines: one JSON object per event with the fields an operator joins
//! on — `trace_id`/`span_id` of the active OpenTelemetry span and the
//! `request_id` of the call being served.

use std::{fmt, sync::Arc};

use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    Layer,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    layer::Context,
    registry::LookupSpan,
};

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors (the services' default).
    Json,
    /// Human-readable lines, for a terminal (the `mercato` monolith).
    Text,
}

/// The `request_id` field of a span, kept in its extensions so every event
/// below it (and every outgoing call) can find it.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Stores [`RequestId`] on spans that declare a `request_id` field.
pub(crate) struct RequestIdLayer;

struct RequestIdVisitor(Option<Arc<str>>);

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "request_id" {
            self.0 = Some(value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "request_id" {
            self.0 = Some(format!("{value:?}").into());
        }
    }
}

impl<S> Layer<S> for RequestIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field("request_id").is_none() {
            return;
        }
        let mut visitor = RequestIdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(value), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(RequestId(value));
        }
    }
}

/// The request id of the call the current task serves, if any.
pub fn current_request_id() -> Option<Arc<str>> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            registry
                .span(id)?
                .scope()
                .find_map(|span| span.extensions().get::<RequestId>().map(|r| r.0.clone()))
        })
        .flatten()
}

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The JSON line format: `timestamp`, `level`, `target`, `message`, the
/// event's own fields, the current `span` name, and — inside a call —
/// `trace_id`, `span_id` and `request_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut line));
        line.entry("message").or_insert_with(|| "".into());

        // The OpenTelemetry layer attaches the span's context while it is
        // entered, so the active context is this event's span.
        let cx = opentelemetry::Context::current();
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            line.insert(
                "trace_id".into(),
                span_context.trace_id().to_string().into(),
            );
            line.insert("span_id".into(), span_context.span_id().to_string().into());
        }
        if let Some(scope) = ctx.event_scope() {
            let mut request_id = None;
            for (i, span) in scope.enumerate() {
                if i == 0 {
                    line.insert("span".into(), span.name().into());
                }
                if let Some(id) = span.extensions().get::<RequestId>() {
                    request_id = Some(id.0.clone());
                    break;
                }
            }
            if let Some(id) = request_id {
                line.insert("request_id".into(), Value::String(id.to_string()));
            }
        }
        let json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{json}")
    }
}
