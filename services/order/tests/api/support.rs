//! The three services for one test.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use mercato_payment::provider::PaymentProvider;

use mercato_activity::ActivityFeed;
use mercato_platform::{Server, ServerSettings};
use mercato_proto::{
    order::v1::{
        CreateOrderRequest, Order, OrderItem, Product,
        catalog_service_client::CatalogServiceClient, order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::{SetUserStatusRequest, UserStatus, user_service_client::UserServiceClient},
};
pub use mercato_testkit::{auth::AuthedChannel, *};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// User and payment servers, and an order server in-process or as a child process.
pub struct Suite {
    pub order_db: TestDatabase,
    /// Holds the child process's config file.
    order_db_dir: tempfile::TempDir,
    _user_db: TestDatabase,
    _payment_db: TestDatabase,
    pub user_addr: SocketAddr,
    /// The order service reaches the user service through this proxy, so a
    /// test can take the user service away and bring it back.
    pub user_proxy: TcpProxy,
    /// The order service reaches the payment service through this proxy,
    /// so a test can take payments away and bring them back.
    pub payment_proxy: TcpProxy,
    /// The order server's gRPC address, once one is connected.
    pub order_addr: Option<SocketAddr>,
    /// Metrics of the in-process order server.
    pub order_metrics: Option<SocketAddr>,
    pub users: UserServiceClient<AuthedChannel>,
    pub payments: PaymentServiceClient<AuthedChannel>,
    pub orders: OrderServiceClient<AuthedChannel>,
    pub catalog: CatalogServiceClient<AuthedChannel>,
    /// Shared by all in-process services, as in the monolith.
    pub feed: ActivityFeed,
    stops: Vec<CancellationToken>,
    order_stop: Option<CancellationToken>,
    order_process: Option<Child>,
    /// What the order processes logged, as JSON lines.
    order_log: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

/// How an order-service process is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Leases of 1 s, a 5 s saga deadline, breakers open 300 ms: recovery is quick.
    Fast,
    /// Whatever the binary ships with.
    ShippedDefaults,
}

async fn serve(server: Server) -> (SocketAddr, CancellationToken) {
    let addr = server.grpc_addr();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone().cancelled_owned()));
    (addr, stop)
}

/// Order settings for tests: short leases and deadlines so recovery is quick.
pub fn fast_order_settings(s: &mut mercato_order::Settings) {
    s.saga_lease_secs = 1.0;
    s.database.database_idle_in_transaction_timeout_ms = 1000;
    s.saga_poll_ms = 100;
    s.saga_deadline_secs = 5.0;
    s.order_wait_secs = 15.0;
    // Breakers stay open only briefly, so compensations blocked by an open
    // breaker resume within the tests' waits.
    s.breaker_user.open_ms = 300;
    s.breaker_payment.open_ms = 300;
}

/// Builds the payment service's provider over its database: tests inject
/// one that fails or stalls on cue (wrapping the simulated one).
pub type ProviderFactory =
    Box<dyn FnOnce(&mercato_database::Database) -> Arc<dyn PaymentProvider> + Send>;

impl Suite {
    /// All three services in-process, each on its own server.
    pub async fn start(db: Db, adjust: impl FnOnce(&mut mercato_order::Settings)) -> Self {
        Self::start_with(db, Timing::Fast, None, adjust).await
    }

    /// [`Suite::start`] timed as given, with the payment provider `provider`
    /// builds (the simulated one if `None`).
    pub async fn start_with(
        db: Db,
        timing: Timing,
        provider: Option<ProviderFactory>,
        adjust: impl FnOnce(&mut mercato_order::Settings),
    ) -> Self {
        let mut suite = Self::peers(db, timing, provider).await;
        let mut settings = suite.order_settings();
        if timing == Timing::Fast {
            fast_order_settings(&mut settings);
        }
        adjust(&mut settings);
        let mut server = Server::bind(settings.server.clone()).await.unwrap();
        mercato_order::install(&mut server, &settings, suite.feed.clone())
            .await
            .unwrap();
        server.protect(&settings.auth, None).unwrap();
        suite.order_metrics = Some(server.metrics_addr());
        let (addr, stop) = serve(server).await;
        suite.order_stop = Some(stop);
        suite.connect_order(addr).await;
        suite
    }

    /// User and payment services only; start the order service separately.
    pub async fn peers_only(db: Db) -> Self {
        Self::peers_only_with(db, Timing::Fast).await
    }

    /// [`Suite::peers_only`] with the payment service timed as given.
    pub async fn peers_only_with(db: Db, timing: Timing) -> Self {
        Self::peers(db, timing, None).await
    }

    /// User and payment services, the payment service with the provider
    /// `provider` builds (the simulated one if `None`).
    pub async fn peers(db: Db, timing: Timing, provider: Option<ProviderFactory>) -> Self {
        let feed = ActivityFeed::in_process();
        let user_db = TestDatabase::create(db).await;
        let payment_db = TestDatabase::create(db).await;
        let order_db = TestDatabase::create(db).await;

        let user_settings = mercato_user::Settings {
            server: ServerSettings::ephemeral(),
            auth: mercato_testkit::auth::settings(),
            database: user_db.settings(),
            ..mercato_user::Settings::default()
        };
        let mut server = Server::bind(user_settings.server.clone()).await.unwrap();
        mercato_user::install(&mut server, &user_settings, feed.clone())
            .await
            .unwrap();
        server.protect(&user_settings.auth, None).unwrap();
        let (user_addr, user_stop) = serve(server).await;

        let mut payment_settings = mercato_payment::Settings {
            server: ServerSettings::ephemeral(),
            auth: mercato_testkit::auth::settings(),
            database: payment_db.settings(),
            ..mercato_payment::Settings::default()
        };
        if timing == Timing::Fast {
            // A charge abandoned by a killed order service is taken over soon.
            payment_settings.idempotency_lease_secs = 1.0;
            payment_settings
                .database
                .database_idle_in_transaction_timeout_ms = 1000;
            // A statement, a provider call and a statement fit in the lease.
            payment_settings.database.database_statement_timeout_ms = 300;
            payment_settings.provider_timeout_ms = 400;
            payment_settings.simulated_slow_ms = 300;
        }
        let mut server = Server::bind(payment_settings.server.clone()).await.unwrap();
        match provider {
            Some(provider) => {
                mercato_payment::install_with(
                    &mut server,
                    &payment_settings,
                    feed.clone(),
                    provider,
                )
                .await
            }
            None => mercato_payment::install(&mut server, &payment_settings, feed.clone()).await,
        }
        .unwrap();
        server.protect(&payment_settings.auth, None).unwrap();
        let (payment_addr, payment_stop) = serve(server).await;

        let user_proxy = TcpProxy::start(user_addr).await;
        let payment_proxy = TcpProxy::start(payment_addr).await;
        let users = UserServiceClient::new(admin_channel(user_addr).await);
        let payments = PaymentServiceClient::new(admin_channel(payment_addr).await);
        // Placeholder clients until an order service is connected.
        let idle = mercato_testkit::auth::with_token(
            Channel::from_static("http://127.0.0.1:1").connect_lazy(),
            &mercato_testkit::auth::admin(),
        );
        Self {
            order_db,
            order_db_dir: tempfile::tempdir().unwrap(),
            _user_db: user_db,
            _payment_db: payment_db,
            user_addr,
            user_proxy,
            payment_proxy,
            order_metrics: None,
            order_addr: None,
            users,
            payments,
            orders: OrderServiceClient::new(idle.clone()),
            catalog: CatalogServiceClient::new(idle),
            feed,
            stops: vec![user_stop, payment_stop],
            order_stop: None,
            order_process: None,
            order_log: Default::default(),
        }
    }

    pub fn order_settings(&self) -> mercato_order::Settings {
        mercato_order::Settings {
            server: ServerSettings::ephemeral(),
            auth: mercato_testkit::auth::settings(),
            database: self.order_db.settings(),
            service_api_key: mercato_testkit::auth::service_key().into(),
            user_service_addr: self.user_proxy.addr.to_string(),
            payment_service_addr: self.payment_proxy.addr.to_string(),
            ..mercato_order::Settings::default()
        }
    }

    async fn connect_order(&mut self, addr: SocketAddr) {
        self.order_addr = Some(addr);
        let channel = admin_channel(addr).await;
        self.orders = OrderServiceClient::new(channel.clone());
        self.catalog = CatalogServiceClient::new(channel);
    }

    /// Starts `order-service` as a child process (killing any previous one),
    /// with `crash_point` set if given, and connects to it.
    pub async fn start_order_process(&mut self, crash_point: Option<&str>) {
        self.start_order_process_with(crash_point, Timing::Fast, &[])
            .await;
    }

    /// [`Suite::start_order_process`] with the given timing and extra
    /// environment (which wins over the rest).
    pub async fn start_order_process_with(
        &mut self,
        crash_point: Option<&str>,
        timing: Timing,
        env: &[(&str, &str)],
    ) {
        self.kill_order_process();
        let s = self.order_settings();
        let config = self.order_db_dir.path().join("order-service.yaml");
        std::fs::write(&config, mercato_testkit::auth::settings_yaml()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_order-service"));
        command
            .env_clear()
            .env("CONFIG_FILE", &config)
            .env("SERVICE_API_KEY", s.service_api_key.expose())
            .env("GRPC_ADDR", "127.0.0.1:0")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("REST_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", s.database.database_url.expose())
            .env("USER_SERVICE_ADDR", &s.user_service_addr)
            .env("PAYMENT_SERVICE_ADDR", &s.payment_service_addr)
            .env("SAGA_CRASH_POINT", crash_point.unwrap_or(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if timing == Timing::Fast {
            command
                .env("SAGA_LEASE_SECS", "1")
                .env("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", "1000")
                .env("SAGA_POLL_MS", "100")
                .env("SAGA_DEADLINE_SECS", "5")
                .env("ORDER_WAIT_SECS", "15")
                .env("BREAKER_USER__OPEN_MS", "300")
                .env("BREAKER_PAYMENT__OPEN_MS", "300");
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log = self.order_log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    if json["message"] == "order service listening"
                        && let Some(tx) = tx.take()
                    {
                        let addr = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
                        let _ = tx.send((addr("grpc"), addr("metrics")));
                    }
                    log.lock().unwrap().push(json);
                }
            }
        });
        let (grpc, metrics) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap();
        self.order_process = Some(child);
        self.order_metrics = Some(metrics.parse().unwrap());
        self.connect_order(grpc.parse().unwrap()).await;
    }

    /// Every JSON line the order processes of this suite logged so far.
    pub fn order_process_log(&self) -> Vec<serde_json::Value> {
        self.order_log.lock().unwrap().clone()
    }

    /// Waits for the child process to exit (it aborts at its crash point).
    pub async fn wait_order_process_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.order_process.take().expect("order process running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }

    fn kill_order_process(&mut self) {
        if let Some(mut child) = self.order_process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new user with the given status; returns its id.
    pub async fn user(&mut self, email: &str, status: UserStatus) -> String {
        let user = self
            .users
            .create_user(mercato_testkit::fixtures::new_user(email, "Buyer"))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        if status != UserStatus::Active {
            self.users
                .set_user_status(SetUserStatusRequest {
                    user_id: user.user_id.clone(),
                    status: status.into(),
                })
                .await
                .unwrap();
        }
        user.user_id
    }

    pub async fn product(&mut self, id: &str, price_minor: i64, stock: i64) -> Product {
        self.catalog
            .create_product(mercato_testkit::fixtures::new_product(
                id,
                "USD",
                price_minor,
                stock,
            ))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
    }

    pub async fn place(
        &mut self,
        request_id: &str,
        user_id: &str,
        items: &[(&str, i32)],
        method: &str,
    ) -> Result<Order, tonic::Status> {
        self.orders
            .create_order(order_request(request_id, user_id, items, method))
            .await
            .map(|r| r.into_inner().order.unwrap())
    }
}

pub fn order_request(
    request_id: &str,
    user_id: &str,
    items: &[(&str, i32)],
    method: &str,
) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        user_id: user_id.into(),
        items: items
            .iter()
            .map(|(p, q)| OrderItem {
                product_id: (*p).into(),
                quantity: *q,
                unit_price: None,
            })
            .collect(),
        payment_method: method.into(),
    }
}

impl Suite {
    /// CreateOrder with a deadline of `within`: past it the order comes back PENDING.
    pub async fn place_within(
        &self,
        request: mercato_proto::order::v1::CreateOrderRequest,
        within: Duration,
    ) -> Order {
        let mut request = tonic::Request::new(request);
        request.set_timeout(within);
        self.orders
            .clone()
            .create_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// CancelOrder with a deadline of `within`: past it the order comes back as it is.
    pub async fn cancel_within(&self, order_id: &str, within: Duration) -> Order {
        let mut request = tonic::Request::new(mercato_proto::order::v1::CancelOrderRequest {
            order_id: order_id.into(),
            reason: "changed my mind".into(),
        });
        request.set_timeout(within);
        self.orders
            .clone()
            .cancel_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// The order's status now.
    /// Waits until the order of `request_id` is stored with its saga at `step`.
    pub async fn wait_for_saga_step(&self, request_id: &str, step: i64) {
        let db = self.order_db.connect().await;
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT s.step FROM sagas s JOIN orders o ON o.order_id = s.saga_id WHERE o.request_id = $1",
            )
            .bind(request_id)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
            if stored == Some(step) {
                return;
            }
            assert!(
                std::time::Instant::now() < limit,
                "{request_id}: saga at {stored:?}, not {step}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn order_status(&self, order_id: &str) -> mercato_proto::order::v1::OrderStatus {
        self.orders
            .clone()
            .get_order(mercato_proto::order::v1::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .status()
    }

    /// Waits (at most five seconds) until the order has `status`.
    pub async fn wait_for_status(
        &self,
        order_id: &str,
        status: mercato_proto::order::v1::OrderStatus,
    ) {
        eventually(
            &format!("order {order_id} {}", status.as_str_name()),
            || async { self.order_status(order_id).await == status },
        )
        .await;
    }

    /// One series of the order server's /metrics, e.g. `circuit_breaker_state{breaker="payment"}`.
    pub async fn order_metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.order_metrics?, "/metrics").await;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.kill_order_process();
        for stop in self.stops.iter().chain(self.order_stop.iter()) {
            stop.cancel();
        }
    }
}
