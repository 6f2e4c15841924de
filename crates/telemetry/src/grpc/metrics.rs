//! The grpc-ecosystem metric families and the record of one call.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::Histogram,
    },
    registry::Registry,
};
use tonic::Code;

use super::{GrpcMethods, MethodInfo, MethodKind, framing::CountedBody};
use crate::CallContext;

/// Which end of the call the metrics describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// The Go names of the codes (`Canceled` with one l), as stock dashboards expect.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Prometheus' default buckets, which the Go middleware uses too.
fn handling_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// `grpc_server_*` or `grpc_client_*`: see the module docs. Clones share the families.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    side: Side,
    started: Family<MethodLabels, Counter>,
    handled: Family<CodeLabels, Counter>,
    handling: HistogramFamily,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
}

impl GrpcMetrics {
    /// Registers the families of `side` in `registry` (once per registry).
    pub fn register(registry: &mut Registry, side: Side) -> Self {
        let metrics = Self {
            side,
            started: Family::default(),
            handled: Family::default(),
            handling: HistogramFamily::new_with_constructor(handling_histogram),
            received: Family::default(),
            sent: Family::default(),
        };
        let (prefix, who) = match side {
            Side::Server => ("grpc_server", "on the server"),
            Side::Client => ("grpc_client", "by the client"),
        };
        registry.register(
            format!("{prefix}_started"),
            format!("RPCs started {who}"),
            metrics.started.clone(),
        );
        registry.register(
            format!("{prefix}_handled"),
            format!("RPCs completed {who}, by status code"),
            metrics.handled.clone(),
        );
        registry.register(
            format!("{prefix}_handling_seconds"),
            format!("Time from the start of an RPC to its status {who}"),
            metrics.handling.clone(),
        );
        registry.register(
            format!("{prefix}_msg_received"),
            format!("Messages received {who}"),
            metrics.received.clone(),
        );
        registry.register(
            format!("{prefix}_msg_sent"),
            format!("Messages sent {who}"),
            metrics.sent.clone(),
        );
        metrics
    }

    /// Creates, at zero, the series of `methods` that a rate or a ratio
    /// reads before they first move: calls started, and calls handled with
    /// `OK` and with each code that is the server's fault (`Unknown`,
    /// `DeadlineExceeded`, `ResourceExhausted`, `Unimplemented`,
    /// `Internal`, `Unavailable`, `DataLoss`). A series born at its first
    /// error would start at 1, and `rate()`/`increase()` would miss that
    /// error (Prometheus never assumes an unseen series was 0): the first
    /// errors of a fresh canary would go uncounted. (8 codes, not all 17,
    /// to keep the series per pod bounded.)
    pub fn initialize(&self, methods: impl IntoIterator<Item = MethodInfo>) {
        const CODES: [Code; 8] = [
            Code::Ok,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
        ];
        for method in methods {
            let labels = MethodLabels {
                grpc_type: method.kind.as_str(),
                grpc_service: method.service,
                grpc_method: method.method,
            };
            drop(self.started.get_or_create(&labels));
            for code in CODES {
                drop(self.handled.get_or_create(&CodeLabels {
                    grpc_type: labels.grpc_type,
                    grpc_service: labels.grpc_service,
                    grpc_method: labels.grpc_method,
                    grpc_code: code_name(code),
                }));
            }
        }
    }

    /// The side these metrics describe.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Resolves the series of every method in `methods` lazily: each is
    /// looked up in its family once, on the method's first call, and kept
    /// (no label hashing per call).
    pub(crate) fn table(&self, methods: &GrpcMethods) -> Arc<MethodTable> {
        let mut series: Vec<MethodSeries> = Vec::with_capacity(methods.len() + 1);
        series.resize_with(methods.len() + 1, MethodSeries::default);
        for method in std::iter::once(MethodInfo::UNKNOWN).chain(methods.iter().copied()) {
            series[method.index].labels = MethodLabels {
                grpc_type: method.kind.as_str(),
                grpc_service: method.service,
                grpc_method: method.method,
            };
        }
        Arc::new(MethodTable {
            metrics: self.clone(),
            series: series.into_boxed_slice(),
        })
    }
}

/// The metric series of each method of one [`GrpcMethods`] table, by
/// [`MethodInfo::index`].
#[derive(Debug)]
pub(crate) struct MethodTable {
    metrics: GrpcMetrics,
    series: Box<[MethodSeries]>,
}

/// One method's series, each resolved on first use.
#[derive(Debug)]
struct MethodSeries {
    labels: MethodLabels,
    started: OnceLock<Counter>,
    handling: OnceLock<Histogram>,
    received: OnceLock<Counter>,
    sent: OnceLock<Counter>,
    /// By `Code as usize`.
    handled: [OnceLock<Counter>; 17],
}

impl Default for MethodSeries {
    fn default() -> Self {
        Self {
            labels: MethodLabels {
                grpc_type: "",
                grpc_service: "",
                grpc_method: "",
            },
            started: OnceLock::new(),
            handling: OnceLock::new(),
            received: OnceLock::new(),
            sent: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

fn resolve<'a, L, M, C>(cell: &'a OnceLock<M>, family: &Family<L, M, C>, labels: &L) -> &'a M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    cell.get_or_init(|| family.get_or_create(labels).clone())
}

impl MethodTable {
    fn series(&self, method: MethodInfo) -> &MethodSeries {
        self.series.get(method.index).unwrap_or(&self.series[0])
    }

    /// Counts the call as started and its request's messages (a
    /// client-streaming body is wrapped to count them as they pass).
    pub(crate) fn start(
        self: &Arc<Self>,
        method: MethodInfo,
        span: tracing::Span,
        call: Option<&CallContext>,
        request: http::Request<tonic::body::Body>,
    ) -> (CallRecord, http::Request<tonic::body::Body>) {
        let series = self.series(method);
        resolve(&series.started, &self.metrics.started, &series.labels).inc();
        let streams_response = matches!(
            method.kind,
            MethodKind::ServerStream | MethodKind::BidiStream
        );
        let record = CallRecord {
            table: self.clone(),
            method: method.index.min(self.series.len() - 1),
            start: Instant::now(),
            span,
            call: call.cloned(),
            streams_response,
            finished: false,
        };
        let counter = record.request_counter();
        let request = if method.kind.client_streams() {
            request.map(|body| tonic::body::Body::new(CountedBody::new(body, counter)))
        } else {
            counter.inc();
            request
        };
        (record, request)
    }
}

/// One call in flight: counted as handled exactly once, when its status is
/// known — or as `Canceled` if it is dropped first.
#[derive(Debug)]
pub(crate) struct CallRecord {
    table: Arc<MethodTable>,
    /// Index into the table.
    method: usize,
    start: Instant,
    pub(crate) span: tracing::Span,
    /// A streaming response is produced while its body is polled, so the
    /// body enters the span and the call then; a unary one was produced
    /// already (entering costs registry lookups on every frame).
    pub(crate) streams_response: bool,
    /// The served call (server side): its end is logged as part of it.
    pub(crate) call: Option<CallContext>,
    finished: bool,
}

impl CallRecord {
    fn series(&self) -> &MethodSeries {
        &self.table.series[self.method]
    }

    /// Messages in the request: received by a server, sent by a client.
    pub(crate) fn request_counter(&self) -> Counter {
        let metrics = &self.table.metrics;
        let series = self.series();
        match metrics.side {
            Side::Server => resolve(&series.received, &metrics.received, &series.labels),
            Side::Client => resolve(&series.sent, &metrics.sent, &series.labels),
        }
        .clone()
    }

    /// Messages in the response: sent by a server, received by a client.
    pub(crate) fn response_messages(&self, messages: u64) {
        if messages == 0 {
            return;
        }
        let metrics = &self.table.metrics;
        let series = self.series();
        match metrics.side {
            Side::Server => resolve(&series.sent, &metrics.sent, &series.labels),
            Side::Client => resolve(&series.received, &metrics.received, &series.labels),
        }
        .inc_by(messages);
    }

    pub(crate) fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let metrics = &self.table.metrics;
        let series = self.series();
        let MethodLabels {
            grpc_type,
            grpc_service,
            grpc_method,
        } = series.labels;
        series.handled[(code as usize).min(16)]
            .get_or_init(|| {
                metrics
                    .handled
                    .get_or_create(&CodeLabels {
                        grpc_type,
                        grpc_service,
                        grpc_method,
                        grpc_code: code_name(code),
                    })
                    .clone()
            })
            .inc();
        resolve(&series.handling, &metrics.handling, &series.labels).observe(elapsed.as_secs_f64());
        let log = || {
            tracing::debug!(
                grpc.code = code_name(code),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "rpc finished"
            );
        };
        let _entered = self.span.enter();
        match &self.call {
            // The status arrives in the trailers, polled outside the call's task scope.
            Some(call) if tracing::enabled!(tracing::Level::DEBUG) => call.clone().sync_scope(log),
            _ => log(),
        }
        if self.span.is_disabled() {
            return;
        }
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_error(metrics.side, code) {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("otel.status_description", code_name(code));
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// OpenTelemetry's rule: a client span fails on any non-OK code; a server
/// span only on the codes that mean the server failed, not the caller.
fn is_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}
