//! The server side: one layer around the whole tonic router.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response};
use opentelemetry::trace::TraceContextExt as _;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument as _, field::Empty, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    BoxError, GrpcMethods, GrpcMetrics, ObservedBody,
    body::status_of,
    metrics::{CallRecord, MethodTable},
};
use crate::{CallContext, propagation};

/// A name, not a `&str`: a lookup by `&str` parses the name each time.
pub(crate) static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` when it is a sane token (≤ 128 characters of
/// `[A-Za-z0-9._:-]`), else a fresh UUID: the id is logged and echoed, so it
/// must not carry arbitrary bytes.
///
/// Marked sensitive, which HPACK encodes as "never indexed": the id differs
/// on every call, so indexing it would only churn both ends' header tables
/// (an insert and an eviction per answer, and per call the order service
/// makes) for an entry no later message reuses.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    let mut id = sane_request_id(headers);
    id.set_sensitive(true);
    id
}

fn sane_request_id(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 128
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A random (v4) UUID, encoded on the stack: the ids need to be unique,
/// not secret, so they come from the thread's fast generator rather than
/// a system call per request.
fn new_request_id() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid.hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Traces, identifies and counts every call a server answers (see the
/// module docs). It sits outermost, so calls refused by inner layers (load
/// shedding, authentication) are counted too: it turns their errors into
/// statuses itself, as tonic would.
#[derive(Debug, Clone)]
pub struct GrpcServerLayer {
    methods: &'static GrpcMethods,
    table: Arc<MethodTable>,
}

impl GrpcServerLayer {
    /// Labels calls by `methods`; counts into `metrics` (registered for [`super::Side::Server`]).
    pub fn new(methods: &'static GrpcMethods, metrics: GrpcMetrics) -> Self {
        Self {
            methods,
            table: metrics.table(methods),
        }
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer {
            inner,
            methods: self.methods,
            table: self.table.clone(),
        }
    }
}

/// The service [`GrpcServerLayer`] builds.
#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
    methods: &'static GrpcMethods,
    table: Arc<MethodTable>,
}

impl<S, ResBody> Service<Request<Body>> for GrpcServer<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = BoxError;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = self.methods.lookup(request.uri().path());
        let request_id = request_id(request.headers());
        // Disabled (a no-op) unless spans are exported: see crate::call.
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = method.full_name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
            request_id = request_id.to_str().unwrap_or_default(),
        );
        let call = if span.is_disabled() {
            let parent = propagation::remote_parent(request.headers());
            CallContext::new(parent.as_ref(), Some(request_id.clone()))
        } else {
            let parent = propagation::extract(request.headers());
            if parent.span().span_context().is_valid() {
                let _ = span.set_parent(parent);
            }
            CallContext::new(None, Some(request_id.clone()))
                .with_span(span.context().span().span_context())
        };
        let (record, request) = self.table.start(method, span.clone(), Some(&call), request);
        let inner = {
            let _entered = span.enter();
            call.clone().sync_scope(|| self.inner.call(request))
        };
        ServerFuture {
            inner: call.scope(inner.instrument(span)),
            record: Some(record),
            request_id,
        }
    }
}

pin_project! {
    /// The response future of [`GrpcServer`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CallContext, Instrumented<F>>,
        record: Option<CallRecord>,
        request_id: HeaderValue,
    }
}

impl<F, ResBody, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: Default,
{
    type Output = Result<Response<ObservedBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut record = this.record.take();
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let status = tonic::Status::from_error(error.into());
                if let Some(record) = record.as_mut() {
                    record.finish(status.code());
                }
                status.into_http()
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), this.request_id.clone());
        // A trailers-only response carries its status in the headers.
        if let Some(code) = status_of(response.headers())
            && let Some(mut record) = record.take()
        {
            record.finish(code);
        }
        Poll::Ready(Ok(response.map(|body| ObservedBody::new(body, record))))
    }
}

#[cfg(test)]
mod tests {
    use super::request_id;

    fn with(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", value.parse().expect("header value"));
        headers
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(&with("abc-1.2:3_4")), "abc-1.2:3_4");
        assert!(request_id(&with("abc-1.2:3_4")).is_sensitive());
        assert!(request_id(&http::HeaderMap::new()).is_sensitive());
        for hostile in ["has spaces", "semi;colon", "quote\"", &"x".repeat(129), ""] {
            let generated = request_id(&with(hostile));
            assert_ne!(generated, hostile);
            assert!(uuid::Uuid::parse_str(generated.to_str().expect("ascii")).is_ok());
        }
        assert!(
            uuid::Uuid::parse_str(request_id(&http::HeaderMap::new()).to_str().expect("ascii"))
                .is_ok()
        );
    }
}
