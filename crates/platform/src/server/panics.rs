//! A handler that panics answers INTERNAL, like any other server fault.
//!
//! It covers the handler's future — every unary call, and a streaming
//! call up to its response head. A panic while a response stream is
//! flowing (after the head was sent) still resets the stream: nothing can
//! be answered any more, and the metrics count it as the client sees it.
//!
//! Without this, the panic unwinds through the call's task: the client sees
//! the stream reset (UNKNOWN or CANCELLED) and the metrics layer counts a
//! call dropped mid-way — CANCELLED, which an error-rate check (and the
//! rollout controller's success rate) counts as no error. Innermost, over
//! the routes, so every layer above sees an ordinary INTERNAL answer.
//! (tower-http's `CatchPanicLayer` does the same but boxes the body into
//! its own type, which tonic's router and the REST gateway do not take.)

use std::{
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use futures_util::{
    FutureExt,
    future::{CatchUnwind, Map},
};

/// Turns a panic in the inner service's response future into INTERNAL.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PanicsLayer;

impl<S> tower::Layer<S> for PanicsLayer {
    type Service = Panics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Panics { inner }
    }
}

/// See [`PanicsLayer`].
#[derive(Debug, Clone)]
pub(super) struct Panics<S> {
    inner: S,
}

/// What the inner future ends with, caught panic included.
type Caught<R, E> = std::thread::Result<Result<R, E>>;

impl<S, Req, B> tower_service::Service<Req> for Panics<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    // Named, not boxed: no allocation per call on the gRPC hot path.
    type Future = Map<
        CatchUnwind<AssertUnwindSafe<S::Future>>,
        fn(Caught<Self::Response, S::Error>) -> Result<Self::Response, S::Error>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        AssertUnwindSafe(self.inner.call(request))
            .catch_unwind()
            .map(answer)
    }
}

/// The inner answer, or INTERNAL for a panic (logged, its text not sent).
fn answer<B: Default, E>(caught: Caught<http::Response<B>, E>) -> Result<http::Response<B>, E> {
    caught.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "a handler panicked: answered INTERNAL");
        Ok(tonic::Status::internal("internal error").into_http())
    })
}
