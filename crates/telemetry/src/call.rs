//! The call being served, without a span: its trace id, span id and
//! request id, attached to the task that serves it.
//!
//! A tracing-subscriber span costs a registry slot, filter checks and
//! reference counting on every enter, exit, clone and close. A call that
//! logs nothing and exports no span has no use for any of it, yet its log
//! lines (when it writes some) and its outgoing calls need the ids. So the
//! server layer makes a [`CallContext`] — two random numbers and the
//! request id it already had — and runs the call inside it (a Tokio task
//! local: one pointer swap per poll). The JSON log format and the client
//! layer read it from there. Spans exist only when they are exported
//! (see the crate docs).

use std::future::Future;

use http::HeaderValue;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument as _;

tokio::task_local! {
    static CALL: CallContext;
}

/// The identity of one served call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The trace this call belongs to (the caller's, or a new one).
    pub trace_id: TraceId,
    /// This call's own span id (its server span's, when spans are exported).
    pub span_id: SpanId,
    /// Whether the caller asked for the trace to be sampled.
    pub flags: TraceFlags,
    /// The `x-request-id` the call is answered with (none for background
    /// work such as a recovered saga).
    pub request_id: Option<HeaderValue>,
}

/// A fresh non-zero span id from the thread's fast generator (ids need to
/// be unique, not secret).
pub(crate) fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

impl CallContext {
    /// A call in the trace of `parent` (when it is valid), else in a new
    /// trace, with a span id of its own.
    pub fn new(parent: Option<&SpanContext>, request_id: Option<HeaderValue>) -> Self {
        let (trace_id, flags) = match parent {
            Some(parent) if parent.is_valid() => (parent.trace_id(), parent.trace_flags()),
            _ => (new_trace_id(), TraceFlags::SAMPLED),
        };
        Self {
            trace_id,
            span_id: new_span_id(),
            flags,
            request_id,
        }
    }

    /// Work that serves no call (a recovered saga, a sweeper pass): a new
    /// trace, so its logs and its outgoing calls still join up.
    pub fn background() -> Self {
        Self::new(None, None)
    }

    /// The same call with the ids of the span that is exported for it.
    pub(crate) fn with_span(mut self, span: &SpanContext) -> Self {
        if span.is_valid() {
            self.trace_id = span.trace_id();
            self.span_id = span.span_id();
            self.flags = span.trace_flags();
        }
        self
    }

    /// The context an outgoing call from here continues: this trace, a new
    /// span id for the outgoing call.
    pub(crate) fn child(&self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            new_span_id(),
            self.flags,
            true,
            TraceState::NONE,
        )
    }

    /// Runs `future` as (part of) this call.
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<CallContext, F> {
        CALL.scope(self, future)
    }

    /// Runs `f` as (part of) this call, synchronously.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CALL.sync_scope(self, f)
    }

    /// Reads the call the current task serves, if any.
    pub fn with_current<R>(f: impl FnOnce(&CallContext) -> R) -> Option<R> {
        CALL.try_with(f).ok()
    }

    /// The call the current task serves, if any.
    pub fn current() -> Option<CallContext> {
        Self::with_current(Clone::clone)
    }
}

/// `future` as part of the call (and in the span) the current task serves:
/// wrap work handed to another task with it, so its logs keep the call's
/// ids and its spans join the call's trace.
pub fn in_call<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let call = CallContext::current();
    let future = future.in_current_span();
    async move {
        match call {
            Some(call) => call.scope(future).await,
            None => future.await,
        }
    }
}
