//! Settings of the order service and its wiring into a [`Server`].

use std::{future::Future, sync::Arc, time::Duration};

use mercato_activity::ActivityFeed;
use mercato_api::Secret;
use mercato_auth::AuthSettings;
use mercato_breaker::{BreakerSettings, RetrySettings};
use mercato_database::DatabaseSettings;
use mercato_platform::{Server, ServerSettings, StartError, run_alone, settings::SettingsError};
use mercato_proto::order::v1::{
    catalog_service_server::CatalogServiceServer, order_service_server::OrderServiceServer,
};
use mercato_redis::RedisSettings;
use mercato_saga::{Orchestrator, OrchestratorSettings, SagaMetrics, SqlSagaStore};
use serde::{Deserialize, Serialize};

use mercato_telemetry::grpc::GrpcClientLayer;

use crate::{
    catalog::Catalog,
    experiments::PageSizeExperiment,
    grpc::OrderGrpc,
    orders::Orders,
    peers::{BreakerGauges, PeerSettings, Peers, RefusalCounters},
    sagas::{CancelOrderSaga, Deps, PlaceOrderSaga},
    store::{MIGRATIONS, OrderMetrics, OrderStore},
};

/// Everything the order service is configured with; field names are the
/// environment variable names, upper-cased.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Who may call (`auth:` in YAML; `AUTH__JWT__…` in the environment).
    pub auth: AuthSettings,
    /// `DATABASE_URL` (Postgres, or SQLite for the embedded mode) and pool size.
    #[serde(flatten)]
    pub database: DatabaseSettings,
    /// Redis for publishing activity events (`REDIS_URL`, ...).
    #[serde(flatten)]
    pub redis: RedisSettings,
    /// The user service, `host:port` or URL.
    pub user_service_addr: String,
    /// The payment service, `host:port` or URL.
    pub payment_service_addr: String,
    /// This service's own API key (role `service`), sent as `x-api-key` on
    /// calls to the user and payment services; mount it from a Secret
    /// (`SERVICE_API_KEY`). The end user's identity travels only as data.
    pub service_api_key: Secret,
    /// Default deadline of every call to a peer, retries included, in
    /// milliseconds (shortened by an incoming request's deadline).
    pub peer_timeout_ms: u64,
    /// Circuit breaker of calls to the user service (`BREAKER_USER__…`).
    pub breaker_user: BreakerSettings,
    /// Circuit breaker of calls to the payment service (`BREAKER_PAYMENT__…`),
    /// stricter by default: failures there cost money.
    pub breaker_payment: BreakerSettings,
    /// Retries of calls to peers (`RETRY__…`).
    pub retry: RetrySettings,
    /// Seconds an order's saga retries transient failures before it compensates.
    pub saga_deadline_secs: f64,
    /// Seconds a replica owns a running saga without renewing it.
    pub saga_lease_secs: f64,
    /// How often abandoned sagas are looked for, in milliseconds.
    pub saga_poll_ms: u64,
    /// Whether this replica looks for abandoned sagas at all
    /// (`BACKGROUND_WORKERS`). On by default; off for a canary, so that a
    /// release under analysis drives only the sagas of the calls it serves
    /// and never finishes the stable's with its own code (the stable
    /// replicas recover the canary's).
    pub background_workers: bool,
    /// Longest CreateOrder/CancelOrder wait for the outcome when the call
    /// sets no deadline, in seconds.
    pub order_wait_secs: f64,
    /// The A/B experiment (on the user service) whose variant config
    /// `page_size` sets ListProducts' default page size; empty: none.
    pub catalog_page_size_experiment: String,
    /// Fault injection for crash tests only; acted on only by test builds
    /// (see `mercato_saga::OrchestratorSettings::crash_point`).
    pub saga_crash_point: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            auth: AuthSettings::default(),
            database: DatabaseSettings::sqlite_file("order"),
            redis: RedisSettings::default(),
            user_service_addr: "http://user-service:9090".into(),
            payment_service_addr: "http://payment-service:9090".into(),
            service_api_key: Secret::default(),
            peer_timeout_ms: 5000,
            breaker_user: BreakerSettings::default(),
            breaker_payment: BreakerSettings::strict(),
            retry: RetrySettings::default(),
            saga_deadline_secs: 30.0,
            saga_lease_secs: 10.0,
            saga_poll_ms: 1000,
            order_wait_secs: 10.0,
            catalog_page_size_experiment: "catalog-page-size".into(),
            saga_crash_point: String::new(),
            background_workers: true,
        }
    }
}

impl Settings {
    /// Checks what serde cannot, with messages naming the setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate()?;
        let positive = [
            ("saga_deadline_secs", self.saga_deadline_secs),
            ("saga_lease_secs", self.saga_lease_secs),
            ("order_wait_secs", self.order_wait_secs),
        ];
        for (name, value) in positive {
            if !(0.01..=86_400.0).contains(&value) {
                return Err(SettingsError::new(format!(
                    "{name} must be between 0.01 and 86400, got {value}"
                )));
            }
        }
        if self.peer_timeout_ms == 0 || self.saga_poll_ms == 0 {
            return Err(SettingsError::new(
                "peer_timeout_ms and saga_poll_ms must be at least 1",
            ));
        }
        // A runner that froze inside a transaction holds its saga's row
        // until the server ends the session: no later than its lease, so
        // that another replica resumes the saga once the lease is over.
        let idle = self.database.database_idle_in_transaction_timeout_ms;
        if Duration::from_millis(idle) > Duration::from_secs_f64(self.saga_lease_secs) {
            return Err(SettingsError::new(format!(
                "database_idle_in_transaction_timeout_ms ({idle}) must not exceed saga_lease_secs ({} s)",
                self.saga_lease_secs
            )));
        }
        Ok(())
    }
}

/// Connects and migrates the database, starts saga recovery, and adds
/// `order.v1.OrderService` and `order.v1.CatalogService` to `server`.
pub async fn install(
    server: &mut Server,
    settings: &Settings,
    feed: ActivityFeed,
) -> Result<(), StartError> {
    settings.validate()?;
    let database = server
        .open_database(&settings.database, &MIGRATIONS)
        .await?;

    let invalid = |e: String| StartError::Invalid(e);
    let peer_settings = PeerSettings {
        user_addr: settings.user_service_addr.clone(),
        payment_addr: settings.payment_service_addr.clone(),
        timeout: Duration::from_millis(settings.peer_timeout_ms),
        api_key: settings.service_api_key.clone(),
        user_breaker: settings.breaker_user.config().map_err(invalid)?,
        payment_breaker: settings.breaker_payment.config().map_err(invalid)?,
        retry: settings.retry.config().map_err(invalid)?,
    };
    let gauges = BreakerGauges::default();
    server.registry_mut().register(
        "circuit_breaker_state",
        "State of each circuit breaker: 0 closed, 1 open, 2 half-open",
        gauges.clone(),
    );
    let refusals = RefusalCounters::default();
    server.registry_mut().register(
        "peer_credentials_refused",
        "Calls a peer refused with UNAUTHENTICATED or PERMISSION_DENIED: this service's own credentials (SERVICE_API_KEY) are wrong or were rotated out",
        refusals.clone(),
    );
    let telemetry = GrpcClientLayer::new(mercato_platform::grpc_methods(), server.client_metrics());
    let peers = Peers::new(&peer_settings, &gauges, &refusals, &telemetry)
        .map_err(|e| StartError::Invalid(e.to_string()))?;
    let deps = Arc::new(Deps {
        catalog: Catalog::new(&database),
        orders: OrderStore::new(&database)
            .with_metrics(OrderMetrics::register(server.registry_mut())),
        peers,
        activity: feed.clone(),
    });
    let saga_store = Arc::new(SqlSagaStore::new(&database));
    let orchestration = OrchestratorSettings {
        lease: Duration::from_secs_f64(settings.saga_lease_secs),
        poll_interval: Duration::from_millis(settings.saga_poll_ms),
        crash_point: Some(settings.saga_crash_point.clone()).filter(|p| !p.is_empty()),
        metrics: SagaMetrics::register(server.registry_mut()),
        ..OrchestratorSettings::default()
    };
    let place = Orchestrator::new(
        PlaceOrderSaga::new(deps.clone()),
        saga_store.clone(),
        orchestration.clone(),
    );
    let cancel = Orchestrator::new(
        CancelOrderSaga::new(deps.clone()),
        saga_store,
        orchestration,
    );
    // Resume what a crashed replica left behind, now and periodically.
    if settings.background_workers {
        place.spawn_recovery(server.drain_token());
        cancel.spawn_recovery(server.drain_token());
    }

    let orders = Orders {
        store: deps.orders.clone(),
        catalog: deps.catalog.clone(),
        place,
        cancel,
        activity: feed,
        saga_deadline: Duration::from_secs_f64(settings.saga_deadline_secs),
    };
    let page_size = PageSizeExperiment::new(
        deps.peers.clone(),
        settings.catalog_page_size_experiment.clone(),
    );
    let grpc = OrderGrpc::new(
        orders,
        Duration::from_secs_f64(settings.order_wait_secs),
        page_size,
    );
    let limit = server.settings().max_decoding_message_size;
    server.add_service(OrderServiceServer::new(grpc.clone()).max_decoding_message_size(limit));
    server.add_service(CatalogServiceServer::new(grpc).max_decoding_message_size(limit));
    Ok(())
}

/// Applies the order service's database migrations and returns (`order-service
/// migrate`, what a migration Job runs with the schema owner's role).
pub async fn migrate(settings: Settings) -> Result<(), StartError> {
    settings.database.migrate(&MIGRATIONS).await?;
    Ok(())
}

/// Runs the order service alone until `signal` completes (the `order-service` binary).
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    // It publishes and never serves streams: no firehose reader.
    let feed = ActivityFeed::publisher(settings.redis.open()?);
    run_alone(
        "order service",
        settings.server.clone(),
        &settings.auth,
        settings.redis.open()?,
        async |server| install(server, &settings, feed).await,
        signal,
    )
    .await
}

#[cfg(test)]
mod tests {
    use mercato_platform::settings::load_from;

    use super::*;

    #[test]
    fn per_downstream_breakers_and_retries_load_from_the_config_file()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "breaker_payment:\n  open_ms: 1234\n  minimum_calls: 3\nretry:\n  retryable_codes: [UNAVAILABLE, RESOURCE_EXHAUSTED]\n",
        )?;
        let settings: Settings = load_from(
            Some(file),
            figment::providers::Env::prefixed("MERCATO_NO_SUCH_PREFIX_"),
        )?;
        assert_eq!(settings.breaker_payment.open_ms, 1234);
        assert_eq!(settings.breaker_payment.minimum_calls, 3);
        assert_eq!(
            settings.breaker_payment.failure_rate_threshold, 0.3,
            "untouched fields keep the strict default"
        );
        assert_eq!(settings.breaker_user, BreakerSettings::default());
        let retry = settings.retry.config()?;
        assert_eq!(
            retry.retryable_codes,
            [tonic::Code::Unavailable, tonic::Code::ResourceExhausted]
        );
        Ok(())
    }
}
