//! The client side: one layer directly around a tonic `Channel`, so each
//! attempt on the wire (retries included) is one span and one count.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::{Code, body::Body};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument as _, field::Empty, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    GrpcMethods, GrpcMetrics, ObservedBody,
    body::status_of,
    metrics::{CallRecord, MethodTable},
};
use crate::{CallContext, propagation};

/// Traces and counts every call a client makes, sending the trace context
/// (`traceparent`) and the `x-request-id` of the call being served.
#[derive(Debug, Clone)]
pub struct GrpcClientLayer {
    methods: &'static GrpcMethods,
    table: Arc<MethodTable>,
}

impl GrpcClientLayer {
    /// Labels calls by `methods`; counts into `metrics` (registered for [`super::Side::Client`]).
    pub fn new(methods: &'static GrpcMethods, metrics: GrpcMetrics) -> Self {
        Self {
            methods,
            table: metrics.table(methods),
        }
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClient {
            inner,
            methods: self.methods,
            table: self.table.clone(),
        }
    }
}

/// The service [`GrpcClientLayer`] builds.
#[derive(Debug, Clone)]
pub struct GrpcClient<S> {
    inner: S,
    methods: &'static GrpcMethods,
    table: Arc<MethodTable>,
}

impl<S, ResBody> Service<Request<Body>> for GrpcClient<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let method = self.methods.lookup(request.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = method.full_name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        let headers = request.headers_mut();
        if span.is_disabled() {
            // No span of our own: the call we serve is the parent.
            if let Some(parent) = CallContext::with_current(CallContext::child) {
                propagation::inject_span_context(&parent, headers);
            }
        } else {
            propagation::inject(&span.context(), headers);
        }
        if !headers.contains_key(&super::server::X_REQUEST_ID)
            && let Some(Some(id)) = CallContext::with_current(|c| c.request_id.clone())
        {
            headers.insert(super::server::X_REQUEST_ID.clone(), id);
        }
        let (record, request) = self.table.start(method, span.clone(), None, request);
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ClientFuture {
            inner: inner.instrument(span),
            record: Some(record),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcClient`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        record: Option<CallRecord>,
    }
}

impl<F, ResBody, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut record = this.record.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_of(response.headers())
                    && let Some(mut record) = record.take()
                {
                    record.finish(code);
                }
                Ok(response.map(|body| ObservedBody::new(body, record)))
            }
            Err(error) => {
                // The channel fails only when the peer cannot be reached;
                // tonic reports that to the caller as UNAVAILABLE.
                if let Some(record) = record.as_mut() {
                    record.finish(Code::Unavailable);
                }
                Err(error)
            }
        })
    }
}
