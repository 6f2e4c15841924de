//! A running payment server for one test.

use std::time::Duration;

use mercato_activity::{ActivityEvent, ActivityFeed};
use mercato_payment::{Settings, install, install_with, provider::PaymentProvider};
use mercato_platform::{Server, ServerSettings};
use mercato_proto::{
    common::v1::Money,
    payment::v1::{ChargeRequest, Payment, payment_service_client::PaymentServiceClient},
};
pub use mercato_testkit::{auth::AuthedChannel, *};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Builds the provider over the payment database.
pub type ProviderFactory =
    Box<dyn FnOnce(&mercato_database::Database) -> std::sync::Arc<dyn PaymentProvider> + Send>;

pub struct TestApp {
    pub client: PaymentServiceClient<AuthedChannel>,
    pub database: TestDatabase,
    /// Every event the service announced.
    pub events: broadcast::Receiver<std::sync::Arc<ActivityEvent>>,
    /// Where it serves gRPC and Prometheus metrics.
    pub addr: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    stop: CancellationToken,
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: Db, adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_with_provider(db, adjust, None).await
    }

    /// A server whose provider `provider` builds (the simulated one if `None`).
    pub async fn spawn_with_provider(
        db: Db,
        adjust: impl FnOnce(&mut Settings),
        provider: Option<ProviderFactory>,
    ) -> Self {
        let database = TestDatabase::create(db).await;
        let mut settings = Settings {
            server: ServerSettings::ephemeral(),
            auth: mercato_testkit::auth::settings(),
            database: database.settings(),
            simulated_slow_ms: 300,
            ..Settings::default()
        };
        adjust(&mut settings);
        let feed = ActivityFeed::in_process();
        let events = feed.listen_all();
        let mut server = Server::bind(settings.server.clone()).await.unwrap();
        match provider {
            Some(provider) => install_with(&mut server, &settings, feed, provider).await,
            None => install(&mut server, &settings, feed).await,
        }
        .unwrap();
        server.protect(&settings.auth, None).unwrap();
        let addr = server.grpc_addr();
        let metrics = server.metrics_addr();
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone().cancelled_owned()));
        Self {
            client: PaymentServiceClient::new(admin_channel(addr).await),
            database,
            events,
            addr,
            metrics,
            stop,
        }
    }

    /// The announced event types so far, in order.
    pub fn drain_events(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e.event_type.clone());
        }
        out
    }

    /// The ledger of a payment as (kind, amount), read straight from the database.
    pub async fn ledger(&self, payment_id: &str) -> Vec<(String, i64)> {
        let db = self.database.connect().await;
        sqlx::query_as(
            "SELECT kind, amount_minor FROM payment_ledger WHERE payment_id = $1 ORDER BY entry_id",
        )
        .bind(payment_id)
        .fetch_all(&db.pool)
        .await
        .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

pub fn charge_req(key: &str, order: &str, minor: i64, method: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        user_id: "user-1".into(),
        amount: usd(minor),
        payment_method: method.into(),
    }
}

pub async fn charge(
    app: &mut TestApp,
    key: &str,
    order: &str,
    minor: i64,
    method: &str,
) -> Payment {
    app.client
        .charge(charge_req(key, order, minor, method))
        .await
        .expect("charge")
        .into_inner()
        .payment
        .expect("payment")
}

/// Retries `f` while it answers ABORTED (key in flight), for at most 10 s.
pub async fn settle<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Err(s)
                if s.code() == tonic::Code::Aborted && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Every payment of `order`.
pub async fn payments_of_order(
    app: &mut TestApp,
    order: &str,
) -> Vec<mercato_proto::payment::v1::Payment> {
    app.client
        .list_payments(mercato_proto::payment::v1::ListPaymentsRequest {
            filter: Some(
                mercato_proto::payment::v1::list_payments_request::Filter::OrderId(order.into()),
            ),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payments
}

/// A 1 s key lease, so that abandoned keys are taken over soon; the
/// provider timeout and statement timeout shortened to fit in it (a
/// statement, a call and a statement: the settings refuse more).
pub fn quick_takeover(s: &mut mercato_payment::Settings) {
    s.idempotency_lease_secs = 1.0;
    s.database.database_idle_in_transaction_timeout_ms = 1000;
    s.database.database_statement_timeout_ms = 300;
    s.provider_timeout_ms = 400;
}

/// The service's reconciliation of its ledger with the provider over the
/// last day up to a moment from now (nothing is in flight in these tests
/// when they ask).
pub async fn reconcile_now(app: &mut TestApp) -> mercato_proto::payment::v1::ReconcileResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |seconds: u64| prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap(),
        nanos: 0,
    };
    app.client
        .reconcile(mercato_proto::payment::v1::ReconcileRequest {
            start_time: Some(at(now - 86_400)),
            end_time: Some(at(now + 2)),
        })
        .await
        .unwrap()
        .into_inner()
}

/// VoidCharge of `key`, retried while the key is in flight (ABORTED).
pub async fn void_when_free(
    app: &TestApp,
    key: &str,
) -> mercato_proto::payment::v1::VoidChargeResponse {
    settle(|| {
        let mut client = app.client.clone();
        let request = mercato_proto::payment::v1::VoidChargeRequest {
            idempotency_key: key.into(),
        };
        async move { client.void_charge(request).await }
    })
    .await
    .expect("VoidCharge")
    .into_inner()
}

/// Charge `request`, retried while its key is in flight (ABORTED).
pub async fn charge_when_free(app: &TestApp, request: ChargeRequest) -> Payment {
    settle(|| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.charge(request).await }
    })
    .await
    .expect("Charge")
    .into_inner()
    .payment
    .expect("payment")
}
