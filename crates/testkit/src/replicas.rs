//! The replica fault harness: N order replicas and M payment replicas as
//! real processes on one Postgres database per service and one Redis, as a
//! Kubernetes Deployment with several pods runs them. The payment replicas
//! sit behind an L7 balancer ([`Balancer`]: haproxy, standing in for the
//! mesh), which every order replica calls; callers spread their orders
//! over the order replicas and fail over to the next one with the same
//! `request_id` when theirs does not answer ([`Replicas::place`]). Every
//! setting is at its shipped default. Each replica keeps its ports across
//! restarts, so it comes back as a replaced pod would.
//!
//! Faults are the processes' own: [`ServiceProcess::freeze`] (SIGSTOP),
//! [`ServiceProcess::kill`] and [`ServiceProcess::restart`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mercato_proto::{
    order::v1::{
        Order, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tonic::transport::Channel;

use crate::{
    Db, RedisMode, TestDatabase,
    auth::{self, AuthedChannel},
    balancer::{Balancer, Upstream},
    invariants::Clients,
    processes::{ServiceProcess, free_port, workspace_binary},
    shoppers::Purchase,
};

/// The user service, N order and M payment replicas, and admin clients.
pub struct Replicas {
    /// Kept running for the others.
    _user: ServiceProcess,
    pub orders: Vec<ServiceProcess>,
    pub payments: Vec<ServiceProcess>,
    /// Where the order replicas reach the payment replicas.
    pub payment_balancer: Balancer,
    /// An administrator's client of each order replica.
    pub order_clients: Vec<OrderServiceClient<AuthedChannel>>,
    pub users: UserServiceClient<AuthedChannel>,
    /// The checker's: order replica 0 and the payment balancer.
    pub clients: Clients,
    /// The order and payment databases, for the record checks.
    pub order_db: TestDatabase,
    pub payment_db: TestDatabase,
    _user_db: TestDatabase,
    /// The processes' logs and config; kept when a test fails.
    logs: Option<tempfile::TempDir>,
}

fn lazy_admin(addr: SocketAddr) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    auth::with_token(channel, &auth::admin())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Replicas {
    /// Starts the user service, `payments` payment replicas behind a
    /// balancer and `orders` replicas of `order_binary`.
    pub async fn start(order_binary: PathBuf, orders: usize, payments: usize) -> Self {
        let user_db = TestDatabase::create(Db::Postgres).await;
        let payment_db = TestDatabase::create(Db::Postgres).await;
        let order_db = TestDatabase::create(Db::Postgres).await;
        let logs = tempfile::Builder::new()
            .prefix("mercato-replicas-")
            .tempdir()
            .expect("log dir");
        let config = logs.path().join("config.yaml");
        std::fs::write(&config, auth::settings_yaml()).expect("config file");
        let RedisMode::Url { url, prefix } = RedisMode::fresh() else {
            unreachable!("fresh is a URL")
        };
        let env = |database: &TestDatabase, grpc: SocketAddr, http: SocketAddr| {
            [
                ("CONFIG_FILE", config.display().to_string()),
                ("GRPC_ADDR", grpc.to_string()),
                ("HTTP_ADDR", http.to_string()),
                ("METRICS_ADDR", "127.0.0.1:0".into()),
                ("REST_ADDR", "127.0.0.1:0".into()),
                ("DATABASE_URL", database.url.clone()),
                ("REDIS_URL", url.clone()),
                ("REDIS_KEY_PREFIX", prefix.clone()),
                ("LOG_FORMAT", "json".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
        };
        let dir = |name: String| {
            let dir = logs.path().join(name);
            std::fs::create_dir_all(&dir).expect("replica log dir");
            dir
        };

        let user_grpc = local(free_port());
        let user = ServiceProcess::start(
            "user service",
            workspace_binary("user-service"),
            env(&user_db, user_grpc, local(0)),
            &dir("user".into()),
        )
        .await;

        let mut payment_replicas = Vec::new();
        let mut upstreams = Vec::new();
        for i in 0..payments {
            let upstream = Upstream {
                grpc: local(free_port()),
                http: local(free_port()),
            };
            upstreams.push(upstream);
            payment_replicas.push(
                ServiceProcess::start(
                    "payment service",
                    workspace_binary("payment-service"),
                    env(&payment_db, upstream.grpc, upstream.http),
                    &dir(format!("payment-{i}")),
                )
                .await,
            );
        }
        let payment_balancer = Balancer::start(&upstreams, logs.path()).await;

        let mut order_replicas = Vec::new();
        for i in 0..orders {
            let mut vars = env(&order_db, local(free_port()), local(free_port()));
            vars.extend([
                ("SERVICE_API_KEY".to_owned(), auth::service_key()),
                ("USER_SERVICE_ADDR".to_owned(), user_grpc.to_string()),
                (
                    "PAYMENT_SERVICE_ADDR".to_owned(),
                    payment_balancer.addr.to_string(),
                ),
            ]);
            order_replicas.push(
                ServiceProcess::start(
                    "order service",
                    order_binary.clone(),
                    vars,
                    &dir(format!("order-{i}")),
                )
                .await,
            );
        }
        let order_clients: Vec<_> = order_replicas
            .iter()
            .map(|o| OrderServiceClient::new(lazy_admin(o.grpc)))
            .collect();
        let first_order = lazy_admin(order_replicas[0].grpc);
        Self {
            users: UserServiceClient::new(lazy_admin(user.grpc)),
            clients: Clients {
                orders: OrderServiceClient::new(first_order.clone()),
                payments: PaymentServiceClient::new(lazy_admin(payment_balancer.addr)),
                catalog: CatalogServiceClient::new(first_order),
            },
            order_clients,
            _user: user,
            orders: order_replicas,
            payments: payment_replicas,
            payment_balancer,
            order_db,
            payment_db,
            _user_db: user_db,
            logs: Some(logs),
        }
    }

    /// A new active user; returns its id.
    pub async fn user(&mut self, email: &str) -> String {
        self.users
            .create_user(crate::fixtures::new_user(email, "Shopper"))
            .await
            .expect("CreateUser")
            .into_inner()
            .user
            .expect("user")
            .user_id
    }

    /// A product with `stock` units at `price_minor` USD cents.
    pub async fn product(&mut self, id: &str, price_minor: i64, stock: i64) {
        self.clients
            .catalog
            .clone()
            .create_product(crate::fixtures::new_product(id, "USD", price_minor, stock))
            .await
            .expect("CreateProduct");
    }

    /// Places `purchase` as a caller of order replica `first` does: each
    /// call waits at most `answer_within`; one that fails or does not
    /// answer goes to the next replica with the same `request_id`, until
    /// `give_up_after`.
    pub async fn place(
        clients: &[OrderServiceClient<AuthedChannel>],
        purchase: &Purchase,
        first: usize,
        answer_within: Duration,
        give_up_after: Duration,
    ) -> Order {
        let started = tokio::time::Instant::now();
        let mut replica = first;
        loop {
            let mut request = tonic::Request::new(purchase.request());
            request.set_timeout(answer_within);
            let mut client = clients[replica % clients.len()].clone();
            let answer = tokio::time::timeout(
                answer_within + Duration::from_millis(500),
                client.create_order(request),
            )
            .await;
            match answer {
                Ok(Ok(answer)) => return answer.into_inner().order.expect("order"),
                failed => {
                    assert!(
                        started.elapsed() < give_up_after,
                        "{}: no replica answered within {give_up_after:?}, last {failed:?}",
                        purchase.request_id
                    );
                    replica += 1;
                }
            }
        }
    }

    /// Where each process logs.
    pub fn logs(&self) -> Option<&std::path::Path> {
        self.logs.as_ref().map(tempfile::TempDir::path)
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(logs) = self.logs.take()
        {
            eprintln!("replica logs kept in {}", logs.keep().display());
        }
    }
}
