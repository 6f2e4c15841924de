//! The process shell around a service's gRPC handlers.
//!
//! [`Server::bind`] opens the three listeners (so tests can bind port 0 and
//! read the real ports back), services are added, then [`Server::run`]
//! serves until the shutdown signal and drains:
//!
//! 1. every health status turns NOT_SERVING and `/health/ready` answers 503;
//! 2. after `shutdown_delay_secs` (time for load balancers to notice), the
//!    [`Server::drain_token`] is cancelled — long-lived streams end — and the
//!    gRPC server stops accepting and waits for in-flight calls;
//! 3. whatever is still running after `drain_timeout_secs` is dropped.

mod connections;
mod panics;
mod serve;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use mercato_auth::{
    AuthLayer, AuthSettings,
    api_keys::{KeyStore, KeyStores},
};
use mercato_telemetry::grpc::{GrpcMethods, GrpcMetrics, Side};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, server::NamedService, service::RoutesBuilder};

use mercato_database::{Database, DatabaseSettings, Migrations, PoolMetrics};
use mercato_redis::Redis;

use crate::{
    StartError,
    probes::{Dependency, Lifecycle, ReadinessCheck},
    rate_limit::SharedRateLimiter,
    settings::ServerSettings,
};

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The descriptors' `google.api.http` rules cannot be served.
    #[error("REST routes: {0}")]
    Rest(String),
}

/// Every descriptor set this build serves: reflection lists them and the
/// telemetry layers label calls by their methods.
const FILE_DESCRIPTOR_SETS: [&[u8]; 5] = [
    mercato_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    // google.rpc error details, so grpcurl can print BadRequest etc.
    tonic_types::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The descriptors of this build with their options (`google.api.http`),
/// for the REST gateway; read once.
pub fn descriptor_pool() -> Result<&'static mercato_rest::DescriptorPool, ServerError> {
    static POOL: OnceLock<Result<mercato_rest::DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| mercato_rest::pool(&FILE_DESCRIPTOR_SETS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ServerError::Rest(e.clone()))
}

/// The gRPC methods of this build (ours, health, reflection), read once.
pub fn grpc_methods() -> &'static GrpcMethods {
    static METHODS: OnceLock<GrpcMethods> = OnceLock::new();
    METHODS.get_or_init(|| {
        GrpcMethods::from_file_descriptor_sets(&FILE_DESCRIPTOR_SETS)
            .expect("the descriptor sets compiled into the binary decode")
    })
}

/// A bound, not yet running server. See the module docs.
pub struct Server {
    settings: ServerSettings,
    grpc: TcpListener,
    http: TcpListener,
    metrics: TcpListener,
    /// REST/JSON (crates/rest), through the gRPC stack; none when switched off.
    rest: Option<TcpListener>,
    /// The application services, in the order added.
    routes: RoutesBuilder,
    /// Their full names, for health statuses and reflection.
    service_names: Vec<&'static str>,
    checks: Vec<Box<dyn ReadinessCheck>>,
    registry: Registry,
    /// `grpc_server_*`, kept by the outermost layer.
    server_metrics: GrpcMetrics,
    /// Connection counts of the databases opened through [`Server::open_database`].
    pools: PoolMetrics,
    /// `grpc_client_*`, registered when a service first asks for them.
    client_metrics: Option<GrpcMetrics>,
    /// Cancelled when draining starts; streams watch it to finish cleanly.
    drain: CancellationToken,
    /// Authentication and authorization of every non-public call, set once
    /// by the composition root ([`Server::protect`]).
    auth: Option<AuthLayer>,
    /// API key stores the installed services contribute, asked in order.
    key_stores: Vec<Box<dyn KeyStore>>,
    lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.service_names)
            .field("grpc", &self.grpc.local_addr().ok())
            .finish_non_exhaustive()
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

impl Server {
    /// Binds the gRPC, HTTP and metrics listeners.
    pub async fn bind(settings: ServerSettings) -> Result<Self, ServerError> {
        let grpc = listen(settings.grpc_addr).await?;
        let http = listen(settings.http_addr).await?;
        let metrics = listen(settings.metrics_addr).await?;
        let rest = match settings.rest_enabled {
            true => Some(listen(settings.rest_addr).await?),
            false => None,
        };
        // Read the method table now, not on the first call.
        grpc_methods();
        let mut registry = Registry::default();
        let server_metrics = GrpcMetrics::register(&mut registry, Side::Server);
        let pools = PoolMetrics::default();
        registry.register_collector(Box::new(pools.clone()));
        Ok(Self {
            settings,
            grpc,
            http,
            metrics,
            rest,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            checks: Vec::new(),
            registry,
            server_metrics,
            pools,
            client_metrics: None,
            drain: CancellationToken::new(),
            auth: None,
            key_stores: Vec::new(),
            lifecycle: Arc::default(),
        })
    }

    /// The settings the server was bound with (limits included).
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// The bound gRPC address (the real port when 0 was asked for).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.settings.grpc_addr)
    }

    /// The bound HTTP probe address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.settings.http_addr)
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .unwrap_or(self.settings.metrics_addr)
    }

    /// The bound REST/JSON address; none when REST is switched off.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        let rest = self.rest.as_ref()?;
        Some(rest.local_addr().unwrap_or(self.settings.rest_addr))
    }

    /// Adds a tonic service; it is reported SERVING by health and listed by reflection.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: tower_service::Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Makes the API keys in `store` (e.g. the ones admins manage through
    /// the user service) acceptable to [`Server::protect`].
    pub fn add_key_store(&mut self, store: impl KeyStore) -> &mut Self {
        self.key_stores.push(Box::new(store));
        self
    }

    /// Requires every call except health and reflection to carry
    /// credentials that `auth` accepts: its JWT keys, its configured API
    /// keys, then the keys of every store the installed services added —
    /// with API-key rate limits shared through `redis` when given. Called
    /// once, by the composition root (`run_alone`, `mercato up`), after the
    /// services are installed; a second call is an error.
    pub fn protect(&mut self, auth: &AuthSettings, redis: Option<Redis>) -> Result<(), StartError> {
        if self.auth.is_some() {
            return Err(StartError::Invalid(
                "the server is protected already; build one auth layer in the composition root"
                    .into(),
            ));
        }
        let stores = KeyStores(std::mem::take(&mut self.key_stores));
        let layer = auth
            .layer_with(stores, SharedRateLimiter::new(redis))
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        self.auth = Some(layer);
        Ok(())
    }

    /// Opens and migrates a service's database, has `/health/ready` check it
    /// and `/metrics` report its pool.
    pub async fn open_database(
        &mut self,
        settings: &DatabaseSettings,
        migrations: &Migrations,
    ) -> Result<Database, StartError> {
        let database = settings.open(migrations).await?;
        let checked = database.clone();
        // Critical: without its database the service cannot do its job.
        self.add_readiness_check(Dependency::new("database", true, move || {
            let database = checked.clone();
            async move { database.ping().await }
        }));
        self.pools.watch(migrations.name, database.pool.clone());
        Ok(database)
    }

    /// Has `/health/ready` report Redis: not critical, a failure only
    /// degrades (requests that need no Redis still succeed).
    pub fn watch_redis(&mut self, redis: &Redis) -> &mut Self {
        let redis = redis.clone();
        self.add_readiness_check(Dependency::new("redis", false, move || {
            let redis = redis.clone();
            async move { redis.ping().await }
        }))
    }

    /// Adds a dependency that `/health/ready` checks.
    pub fn add_readiness_check(&mut self, check: Box<dyn ReadinessCheck>) -> &mut Self {
        self.checks.push(check);
        self
    }

    /// The Prometheus registry served on the metrics port; register metrics before `run`.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The `grpc_client_*` metrics of this process, for the clients a
    /// service builds (see `mercato_telemetry::grpc::GrpcClientLayer`).
    pub fn client_metrics(&mut self) -> GrpcMetrics {
        self.client_metrics
            .get_or_insert_with(|| GrpcMetrics::register(&mut self.registry, Side::Client))
            .clone()
    }

    /// Cancelled when draining starts: long-lived streams should end then.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }
}
