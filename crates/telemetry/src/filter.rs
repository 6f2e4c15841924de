//! The one filter of the subscriber, applied to every layer at once.
//!
//! Events go through the `EnvFilter` of `LOG_LEVEL`/`RUST_LOG`; spans
//! through a level of their own (INFO when spans are exported, OFF when
//! not). Being global rather than per-layer, its answer is cached in each
//! callsite's interest when the directives are static: a disabled event or
//! span costs one atomic load, and no per-layer filter state is kept.

use tracing::{Event, Metadata, Subscriber, span, subscriber::Interest};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::Context, registry::LookupSpan,
};

pub(crate) struct Gate {
    pub(crate) events: EnvFilter,
    pub(crate) spans: LevelFilter,
}

impl Gate {
    fn span_enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.spans
    }
}

impl<S> Layer<S> for Gate
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_span() {
            match self.span_enabled(metadata) {
                true => Interest::always(),
                false => Interest::never(),
            }
        } else {
            <EnvFilter as Layer<S>>::register_callsite(&self.events, metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        if metadata.is_span() {
            self.span_enabled(metadata)
        } else {
            <EnvFilter as Layer<S>>::enabled(&self.events, metadata, cx)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let events = <EnvFilter as Layer<S>>::max_level_hint(&self.events)?;
        Some(events.max(self.spans))
    }

    // EnvFilter's span-scoped directives (`[span{field=x}]=debug`) follow
    // the spans it sees.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.events.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.events.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.events.on_enter(id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.events.on_exit(id, cx);
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.events.on_close(id, cx);
    }

    fn event_enabled(&self, event: &Event<'_>, cx: Context<'_, S>) -> bool {
        <EnvFilter as Layer<S>>::event_enabled(&self.events, event, cx)
    }
}
