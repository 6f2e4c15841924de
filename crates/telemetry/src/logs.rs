//! Log lines: one JSON object per event with the fields an operator joins
//! on — `trace_id`/`span_id` of the active OpenTelemetry span (or of the
//! served call, when no span is exported) and the `request_id` of the call
//! being served.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::CallContext;
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
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

        // While an exported span is entered, the OpenTelemetry layer makes
        // its context the active one: the ids of this event's own span.
        // Otherwise (no span is made when none is exported) the ids are the
        // served call's.
        let cx = opentelemetry::Context::current();
        let span_context = cx.span().span_context().clone();
        let call = CallContext::with_current(|call| {
            (call.trace_id, call.span_id, call.request_id.clone())
        });
        let ids = if span_context.is_valid() {
            Some((span_context.trace_id(), span_context.span_id()))
        } else {
            call.as_ref().map(|(trace, span, _)| (*trace, *span))
        };
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), trace_id.to_string().into());
            line.insert("span_id".into(), span_id.to_string().into());
        }
        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            line.insert("span".into(), span.name().into());
        }
        if let Some((_, _, Some(id))) = call
            && let Ok(id) = id.to_str()
        {
            line.insert("request_id".into(), id.into());
        }
        let json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{json}")
    }
}
