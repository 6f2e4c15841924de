//! Settings of the payment service and its wiring into a [`Server`].

use std::{future::Future, sync::Arc, time::Duration};

use mercato_activity::ActivityFeed;
use mercato_auth::AuthSettings;
use mercato_database::{Database, DatabaseSettings};
use mercato_platform::{Server, ServerSettings, StartError, run_alone, settings::SettingsError};
use mercato_proto::payment::v1::payment_service_server::PaymentServiceServer;
use mercato_redis::RedisSettings;
use serde::{Deserialize, Serialize};

use crate::{
    grpc::PaymentGrpc,
    payments::{PaymentMetrics, Payments},
    provider::{PaymentProvider, SimulatedProvider, StripeProvider, StripeSettings},
    reconciliation::{MismatchGauge, MismatchKind},
    store::{MIGRATIONS, PaymentStore},
};

/// Everything the payment service is configured with; field names are the
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
    /// Seconds a request owns its idempotency key; after that a retry with
    /// the same key (or the sweeper) may take over an abandoned one.
    pub idempotency_lease_secs: f64,
    /// Longest wait for one provider call, in milliseconds; with twice
    /// `database_statement_timeout_ms` (the claim and the record) it must
    /// fit in the lease, so that no call is still running when a key is
    /// taken over. A call that does not answer in time has an unknown
    /// outcome (the key stays locked; a retry learns it).
    pub provider_timeout_ms: u64,
    /// How long the simulated provider takes for `pm_slow`, in milliseconds.
    pub simulated_slow_ms: u64,
    /// Which payment provider moves the money: `simulated` (the built-in
    /// one: it moves none) or `stripe`.
    pub payment_provider: ProviderKind,
    /// Stripe's API base URL and secret key file (`payment_provider: stripe`).
    #[serde(flatten)]
    pub stripe: StripeSettings,
    /// `development`, `staging` or `production`. Outside development the
    /// simulated provider is refused (see `danger_allow_simulated_payments`).
    pub deployment_environment: DeploymentEnvironment,
    /// Lets a staging or production service run the simulated provider,
    /// which takes no money for the orders it confirms. Off by default.
    pub danger_allow_simulated_payments: bool,
    /// How often each replica reconciles the ledger with the provider
    /// (gauge `payment_reconciliation_mismatches`), in seconds; 0: never.
    pub reconcile_interval_secs: u64,
    /// The window each of those runs compares, in seconds (ending two key
    /// leases ago).
    pub reconcile_window_secs: u64,
    /// Whether this replica runs the sweeper (settles abandoned charge
    /// keys) and the reconciliation (`BACKGROUND_WORKERS`). On by default;
    /// off for a canary, so that a release under analysis touches only the
    /// payments of the calls it serves (the stable replicas sweep the
    /// canary's keys).
    pub background_workers: bool,
}

/// The payment providers built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// [`SimulatedProvider`]: the `pm_*` test methods, no money moved.
    #[default]
    Simulated,
    /// [`StripeProvider`]: PaymentIntents and Refunds.
    Stripe,
}

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentEnvironment {
    #[default]
    Development,
    Staging,
    Production,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            auth: AuthSettings::default(),
            database: DatabaseSettings::sqlite_file("payment"),
            redis: RedisSettings::default(),
            idempotency_lease_secs: 15.0,
            provider_timeout_ms: 5000,
            simulated_slow_ms: 2000,
            payment_provider: ProviderKind::default(),
            stripe: StripeSettings::default(),
            deployment_environment: DeploymentEnvironment::default(),
            danger_allow_simulated_payments: false,
            reconcile_interval_secs: 900,
            background_workers: true,
            reconcile_window_secs: 86_400,
        }
    }
}

impl Settings {
    /// Checks what serde cannot, with messages naming the setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate()?;
        if !(0.1..=3600.0).contains(&self.idempotency_lease_secs) {
            return Err(SettingsError::new(
                "idempotency_lease_secs must be between 0.1 and 3600",
            ));
        }
        // An owner's work under one lease: the statement that claims or
        // extends the key, one provider call, the statement that records
        // its outcome. All of it fits, so that no call is still running
        // (nor its outcome still being written) when another takes over.
        let statement = Duration::from_millis(self.database.database_statement_timeout_ms);
        let call = Duration::from_millis(self.provider_timeout_ms);
        if self.provider_timeout_ms == 0 || statement + call + statement > self.lease() {
            return Err(SettingsError::new(format!(
                "provider_timeout_ms ({}) plus twice database_statement_timeout_ms ({}) must fit in \
                 idempotency_lease_secs ({} ms), and provider_timeout_ms must be at least 1",
                self.provider_timeout_ms,
                self.database.database_statement_timeout_ms,
                self.lease().as_millis(),
            )));
        }
        if self.payment_provider == ProviderKind::Simulated
            && self.deployment_environment != DeploymentEnvironment::Development
            && !self.danger_allow_simulated_payments
        {
            return Err(SettingsError::new(format!(
                "payment_provider is simulated, which takes no money, but deployment_environment is {:?}: \
                 set payment_provider: stripe (with stripe_secret_key_file), or danger_allow_simulated_payments: true \
                 to run the simulator there anyway",
                self.deployment_environment
            )));
        }
        if self.payment_provider == ProviderKind::Stripe
            && self.stripe.stripe_secret_key_file.is_empty()
        {
            return Err(SettingsError::new(
                "payment_provider is stripe: stripe_secret_key_file must name the file holding the secret key",
            ));
        }
        if !(60..=31 * 86_400).contains(&self.reconcile_window_secs) {
            return Err(SettingsError::new(
                "reconcile_window_secs must be between 60 and 2678400 (31 days)",
            ));
        }
        // An owner that froze inside a transaction holds its key's row
        // until the server ends the session: no later than the key's lease.
        let idle = self.database.database_idle_in_transaction_timeout_ms;
        if Duration::from_millis(idle) > self.lease() {
            return Err(SettingsError::new(format!(
                "database_idle_in_transaction_timeout_ms ({idle}) must not exceed idempotency_lease_secs ({} s)",
                self.idempotency_lease_secs
            )));
        }
        Ok(())
    }

    fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.idempotency_lease_secs)
    }
}

/// Connects and migrates the database and adds `payment.v1.PaymentService`,
/// its readiness check and metrics to `server`, with the provider the
/// settings name; events go to `feed`.
pub async fn install(
    server: &mut Server,
    settings: &Settings,
    feed: ActivityFeed,
) -> Result<(), StartError> {
    settings.validate()?;
    match settings.payment_provider {
        ProviderKind::Simulated => {
            if settings.deployment_environment != DeploymentEnvironment::Development {
                tracing::warn!(
                    environment = ?settings.deployment_environment,
                    "DANGER: the simulated payment provider takes no money for the orders it confirms \
                     (danger_allow_simulated_payments is on)"
                );
            }
            install_with(server, settings, feed, |database| {
                Arc::new(SimulatedProvider::new(
                    database,
                    Duration::from_millis(settings.simulated_slow_ms),
                ))
            })
            .await
        }
        ProviderKind::Stripe => {
            let stripe = StripeProvider::new(
                &settings.stripe,
                Duration::from_millis(settings.provider_timeout_ms),
            )
            .map_err(SettingsError::new)?;
            install_with(server, settings, feed, |_| Arc::new(stripe)).await
        }
    }
}

/// [`install`] with the provider `provider` builds over the opened
/// database: the seam for a real provider, and for tests that need one
/// that fails or stalls on cue.
pub async fn install_with(
    server: &mut Server,
    settings: &Settings,
    feed: ActivityFeed,
    provider: impl FnOnce(&Database) -> Arc<dyn PaymentProvider>,
) -> Result<(), StartError> {
    settings.validate()?;
    let database = server
        .open_database(&settings.database, &MIGRATIONS)
        .await?;

    let metrics = PaymentMetrics::default();
    let registry = server.registry_mut();
    registry.register(
        "payments",
        "Payments recorded, by status",
        metrics.payments.clone(),
    );
    registry.register(
        "payment_amount_minor",
        "Money moved in minor units, by payment status and currency",
        metrics.amount_minor.clone(),
    );
    // Every series exists from the start (at 0), so rate() and alerts see the first one.
    for operation in ["charge", "refund"] {
        for result in ["recorded", "released", "voided", "pending", "failed"] {
            drop(
                metrics
                    .reconciliations
                    .get_or_create(&vec![("operation", operation), ("result", result)]),
            );
        }
    }
    registry.register(
        "payment_reconciliations",
        "Abandoned or voided idempotency keys settled from the provider's records, by operation and result (recorded, released, voided, pending: no outcome at the provider yet, failed)",
        metrics.reconciliations.clone(),
    );

    let mismatches = MismatchGauge::default();
    for kind in MismatchKind::ALL {
        drop(mismatches.get_or_create(&vec![("kind", kind.as_str())]));
    }
    registry.register(
        "payment_reconciliation_mismatches",
        "Disagreements between the ledger and the payment provider's records found by the last reconciliation, by kind",
        mismatches.clone(),
    );

    let store = PaymentStore::new(&database, settings.lease());
    let payments = Payments::new(
        store,
        provider(&database),
        feed,
        metrics,
        Duration::from_millis(settings.provider_timeout_ms),
    );
    // Every replica sweeps (a canary none); takeovers are fenced, so each
    // key is settled once.
    if settings.background_workers {
        let sweep_every = (settings.lease() / 2).min(Duration::from_secs(5));
        payments.spawn_sweeper(sweep_every, server.drain_token());
    }
    if settings.background_workers && settings.reconcile_interval_secs > 0 {
        payments.spawn_reconciler(
            Duration::from_secs(settings.reconcile_interval_secs),
            Duration::from_secs(settings.reconcile_window_secs),
            mismatches,
            server.drain_token(),
        );
    }
    let limit = server.settings().max_decoding_message_size;
    server.add_service(
        PaymentServiceServer::new(PaymentGrpc::new(payments)).max_decoding_message_size(limit),
    );
    Ok(())
}

/// Applies the payment service's database migrations and returns (`payment-service
/// migrate`, what a migration Job runs with the schema owner's role).
pub async fn migrate(settings: Settings) -> Result<(), StartError> {
    settings.database.migrate(&MIGRATIONS).await?;
    Ok(())
}

/// Runs the payment service alone until `signal` completes (the `payment-service` binary).
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    // It publishes and never serves streams: no firehose reader.
    let feed = ActivityFeed::publisher(settings.redis.open()?);
    run_alone(
        "payment service",
        settings.server.clone(),
        &settings.auth,
        settings.redis.open()?,
        async |server| install(server, &settings, feed).await,
        signal,
    )
    .await
}
