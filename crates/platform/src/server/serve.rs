//! Running a bound [`Server`]: the parts of [`Server::run`], each named,
//! and the drain as one linear sequence.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use axum::{Router, http::header, routing::get};
use mercato_auth::AuthLayer;
use mercato_breaker::deadline::DeadlineLayer;
use mercato_experiment::propagation::VariantServerLayer;
use mercato_telemetry::grpc::{GrpcMetrics, GrpcServerLayer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{service::RoutesBuilder, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

use super::{FILE_DESCRIPTOR_SETS, Server, ServerError, descriptor_pool, grpc_methods};
use crate::{probes, settings::ServerSettings};

/// What draining needs, once serving has started.
struct Drain<'a> {
    settings: &'a ServerSettings,
    health: HealthReporter,
    service_names: &'a [&'static str],
    lifecycle: &'a probes::Lifecycle,
    token: CancellationToken,
}

impl Server {
    /// Serves until `signal` completes, then shuts down as the module docs say.
    pub async fn run(self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            settings,
            grpc,
            http,
            metrics,
            rest,
            mut routes,
            service_names,
            checks,
            mut registry,
            server_metrics,
            drain,
            auth,
            lifecycle,
            ..
        } = self;
        let health = add_health_and_reflection(&mut routes, &service_names).await?;
        // The served methods' error series exist from the first scrape.
        server_metrics.initialize(
            grpc_methods()
                .iter()
                .copied()
                .filter(|m| service_names.contains(&m.service)),
        );
        register_build_info(&mut registry);
        let http = HttpServers::spawn(
            (http, probes::router(lifecycle.clone(), checks)),
            (metrics, metrics_router(Arc::new(registry))),
        );
        let (grpc, stack) =
            serve_grpc(&settings, grpc, routes, auth, server_metrics, drain.clone());
        let rest = match rest {
            Some(listener) => {
                let gateway =
                    mercato_rest::Gateway::new(descriptor_pool()?.clone(), &service_names, stack)
                        .map_err(|e| ServerError::Rest(e.to_string()))?;
                Some(tokio::spawn(serve_http(
                    listener,
                    gateway.router(),
                    drain.clone(),
                )))
            }
            None => None,
        };
        tokio::pin!(grpc);
        lifecycle.started.store(true, Ordering::Release);
        tracing::info!(services = ?service_names, "serving");

        let result = tokio::select! {
            stopped = &mut grpc => stopped.map_err(ServerError::from),
            () = signal => {
                let steps = Drain {
                    settings: &settings,
                    health,
                    service_names: &service_names,
                    lifecycle: &lifecycle,
                    token: drain.clone(),
                };
                steps.run(grpc).await
            }
        };
        drain.cancel();
        if let Some(rest) = rest {
            let _ = rest.await;
        }
        http.stop().await;
        tracing::info!("stopped");
        result
    }
}

impl Drain<'_> {
    /// Not serving → shutdown delay → cancel streams and stop accepting →
    /// bounded wait for in-flight calls. The server may stop by itself at
    /// any step; then its result is the answer.
    async fn run<F>(self, mut grpc: std::pin::Pin<&mut F>) -> Result<(), ServerError>
    where
        F: Future<Output = Result<(), tonic::transport::Error>>,
    {
        tracing::info!("shutting down: reporting NOT_SERVING");
        self.lifecycle.draining.store(true, Ordering::Release);
        let health = self.health;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in self.service_names {
            health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        // Load balancers take this long to notice; calls are still served.
        if let Ok(stopped) = tokio::time::timeout(self.settings.shutdown_delay(), &mut grpc).await {
            return stopped.map_err(ServerError::from);
        }
        tracing::info!(deadline = ?self.settings.drain_timeout(), "draining");
        self.token.cancel();
        match tokio::time::timeout(self.settings.drain_timeout(), grpc).await {
            Ok(stopped) => stopped.map_err(ServerError::from),
            Err(_) => {
                tracing::warn!("drain deadline passed; dropping remaining calls");
                Ok(())
            }
        }
    }
}

/// Health (every service SERVING) and reflection v1 + v1alpha of every
/// service and descriptor set; returns the health reporter.
async fn add_health_and_reflection(
    routes: &mut RoutesBuilder,
    service_names: &[&'static str],
) -> Result<HealthReporter, ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for fds in FILE_DESCRIPTOR_SETS {
        v1 = v1.register_encoded_file_descriptor_set(fds);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(fds);
    }
    let listed = service_names.iter().copied().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    for name in listed {
        v1 = v1.with_service_name(name);
        v1alpha = v1alpha.with_service_name(name);
    }
    for name in service_names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    routes
        .add_service(health_service)
        .add_service(v1.build_v1()?)
        .add_service(v1alpha.build_v1alpha()?);
    Ok(health)
}

fn register_build_info(registry: &mut Registry) {
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
        .set(1);
    registry.register(
        "mercato_build_info",
        "Build information; the value is always 1",
        info,
    );
}

/// The gRPC server with its limits and layers, until `drain` is cancelled,
/// and the same layers over the same routes as one in-process service (what
/// the REST gateway calls: one set of limits for both).
fn serve_grpc(
    limits: &ServerSettings,
    listener: TcpListener,
    routes: RoutesBuilder,
    auth: Option<AuthLayer>,
    metrics: GrpcMetrics,
    drain: CancellationToken,
) -> (
    impl Future<Output = Result<(), tonic::transport::Error>>,
    mercato_rest::GrpcService,
) {
    let max_concurrent = match limits.max_concurrent_requests {
        0 => tokio::sync::Semaphore::MAX_PERMITS,
        n => n,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(age) = limits.max_connection_age() {
        builder = builder.max_connection_age(age);
    }
    let layers = ServiceBuilder::new()
        // Outermost, so every call is traced and counted — those
        // refused below too — and carries its x-request-id.
        .layer(GrpcServerLayer::new(grpc_methods(), metrics))
        // An overloaded server answers RESOURCE_EXHAUSTED
        // at once (tonic maps Overloaded) instead of queueing.
        .load_shed()
        // One budget for all connections, not per connection.
        .layer(GlobalConcurrencyLimitLayer::new(max_concurrent))
        // Unauthenticated and unauthorized calls stop here.
        .option_layer(auth)
        // Handlers see the caller's deadline and bound their own calls by it.
        .layer(DeadlineLayer)
        // Handlers see the call's A/B variants (x-ab-variant) and
        // record theirs; the answer carries them back.
        .layer(VariantServerLayer)
        // A handler's panic is an INTERNAL answer, counted as one above.
        .layer(super::panics::PanicsLayer);
    let routes = routes.routes();
    let in_process = mercato_rest::GrpcService::new(InProcess {
        inner: layers.clone().service(routes.clone()),
        not_ready: None,
    });
    let server = builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(limits.http2_keepalive_interval())
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout()))
        .tcp_keepalive(limits.tcp_keepalive())
        .http2_max_pending_accept_reset_streams(Some(limits.http2_max_pending_accept_reset_streams))
        .http2_max_header_list_size(limits.http2_max_header_list_size)
        .layer(layers)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            super::connections::Capped::new(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                limits.max_connections,
                limits.handshake_timeout(),
            ),
            drain.cancelled_owned(),
        );
    (server, in_process)
}

/// The layered routes called in process, answering as the gRPC server
/// would: the body boxed, a layer's error as the status tonic's server
/// gives for it (the load shedder's as RESOURCE_EXHAUSTED).
#[derive(Clone)]
struct InProcess<S> {
    inner: S,
    /// An error of `poll_ready`, answered by the next call.
    not_ready: Option<tonic::Status>,
}

fn status_of_error(error: tower::BoxError) -> tonic::Status {
    if error.is::<tower::load_shed::error::Overloaded>() {
        tonic::Status::resource_exhausted("Too many active requests")
    } else {
        tonic::Status::from_error(error)
    }
}

impl<S, B> tower::Service<http::Request<tonic::body::Body>> for InProcess<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            std::task::Poll::Ready(Err(e)) => {
                self.not_ready = Some(status_of_error(e.into()));
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(status) = self.not_ready.take() {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            Ok(match call.await {
                Ok(response) => response.map(tonic::body::Body::new),
                Err(error) => status_of_error(error.into()).into_http(),
            })
        })
    }
}

/// The probe and metrics servers.
struct HttpServers {
    tasks: [JoinHandle<()>; 2],
    stop: CancellationToken,
}

impl HttpServers {
    fn spawn(probes: (TcpListener, Router), metrics: (TcpListener, Router)) -> Self {
        let stop = CancellationToken::new();
        Self {
            tasks: [
                tokio::spawn(serve_http(probes.0, probes.1, stop.clone())),
                tokio::spawn(serve_http(metrics.0, metrics.1, stop.clone())),
            ],
            stop,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                if let Err(e) = encode(&mut body, &registry) {
                    tracing::error!(error = %e, "cannot encode metrics");
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    )
}

async fn serve_http(listener: TcpListener, router: Router, stop: CancellationToken) {
    let addr = listener.local_addr().ok();
    // With the client's address in each request's extensions (the REST
    // gateway hands it to the auth layer's per-peer limits).
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(?addr, error = %e, "HTTP server failed");
    }
}
