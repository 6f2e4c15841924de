//! The replica fault harness: N order replicas and M payment replicas as
//! real processes on one Postgres database per service and one Redis, as a
//! Kubernetes Deployment with several pods runs them, every setting at its
//! shipped default. Each replica runs on a test host of its own ([`Host`]:
//! a network namespace), so it can be cut off silently; the payment
//! replicas sit behind an L7 balancer ([`Balancer`]: haproxy, standing in
//! for the mesh) that every order replica calls; callers spread their
//! orders over the order replicas and fail over to the next one with the
//! same `request_id` when theirs does not answer ([`Replicas::shop`]). Each
//! replica keeps its address across restarts, as a replaced pod's Service
//! does.
//!
//! Faults: [`ServiceProcess::freeze`] (SIGSTOP), [`ServiceProcess::kill`]
//! and [`ServiceProcess::restart`], [`Host::cut`] and [`Host::heal`], and
//! [`Replicas::step_clock`] — the wall clock of order replica 1 runs under
//! libfaketime (Debian's `faketime`), monotonic time untouched.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mercato_proto::{
    order::v1::{
        GetOrderRequest, OrderStatus, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    Db, RedisMode, TestDatabase,
    auth::{self, AuthedChannel},
    balancer::{Balancer, Upstream},
    invariants::Clients,
    localstripe::{LocalStripe, Provider},
    netns::Host,
    processes::{LogDir, ServiceProcess, free_port, workspace_binary},
    shoppers::Purchase,
};

/// Where Debian's libfaketime is.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// One replica: its process on its own host (dropped in this order).
pub struct Replica {
    pub process: ServiceProcess,
    pub host: Host,
}

/// The user service, N order and M payment replicas, and admin clients.
pub struct Replicas {
    /// Kept running for the others (on this machine's own network).
    _user: ServiceProcess,
    pub user_port: u16,
    pub orders: Vec<Replica>,
    pub payments: Vec<Replica>,
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
    /// The file order replica 1's libfaketime reads its offset from.
    clock_file: PathBuf,
    /// The Stripe emulator the payment replicas pay through, if they do.
    pub stripe: Option<LocalStripe>,
    /// The processes' logs and config; kept when a test fails.
    logs: LogDir,
}

fn lazy_admin(addr: SocketAddr) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    auth::with_token(channel, &auth::admin())
}

/// One order as its caller saw it, on the caller's clock.
#[derive(Debug, Clone)]
pub struct Shopped {
    /// Empty when no replica took the order before the caller gave up.
    pub order_id: String,
    /// When the caller first asked for it.
    pub placed: Instant,
    /// When the caller first read it CONFIRMED or CANCELLED.
    pub terminal: Option<Instant>,
}

impl Shopped {
    /// Placement to terminal state, if it got there.
    pub fn took(&self) -> Option<Duration> {
        self.terminal.map(|t| t - self.placed)
    }
}

impl Replicas {
    /// Starts the user service, `payments` payment replicas behind a
    /// balancer and `orders` replicas of `order_binary`, each replica on a
    /// host of its own.
    pub async fn start(order_binary: PathBuf, orders: usize, payments: usize) -> Self {
        Self::start_paying(order_binary, orders, payments, Provider::Simulated).await
    }

    /// [`Replicas::start`] with the payment replicas paying through `provider`.
    pub async fn start_paying(
        order_binary: PathBuf,
        orders: usize,
        payments: usize,
        provider: Provider,
    ) -> Self {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "libfaketime is not installed: run `apt-get install -y faketime` (scripts/test.sh does)"
        );
        let user_db = TestDatabase::create(Db::Postgres).await;
        let payment_db = TestDatabase::create(Db::Postgres).await;
        let order_db = TestDatabase::create(Db::Postgres).await;
        let logs = LogDir::new("mercato-replicas-");
        let config = logs.path().join("config.yaml");
        std::fs::write(&config, auth::settings_yaml()).expect("config file");
        let clock_file = logs.path().join("order-1.faketime");
        std::fs::write(&clock_file, "+0s\n").expect("faketime file");
        let RedisMode::Url { url, prefix } = RedisMode::fresh() else {
            unreachable!("fresh is a URL")
        };
        // As a replica on `gateway`'s far side reaches a local service.
        let via = |url: &str, gateway: &str| {
            url.replace("@127.0.0.1:", &format!("@{gateway}:"))
                .replace("//127.0.0.1:", &format!("//{gateway}:"))
        };
        // A replica on a host of its own serves on `own` (its address) and
        // reaches local services through `gateway`.
        let env = |database: &TestDatabase, gateway: &str, own: &str, grpc: u16, http: u16| {
            [
                ("CONFIG_FILE", config.display().to_string()),
                ("GRPC_ADDR", format!("{own}:{grpc}")),
                ("HTTP_ADDR", format!("{own}:{http}")),
                ("METRICS_ADDR", format!("{own}:0")),
                ("REST_ADDR", "127.0.0.1:0".into()),
                ("DATABASE_URL", via(&database.url, gateway)),
                ("REDIS_URL", via(&url, gateway)),
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

        let user_port = free_port();
        let user = ServiceProcess::start(
            "user service",
            workspace_binary("user-service"),
            env(&user_db, "127.0.0.1", "127.0.0.1", user_port, 0),
            &dir("user".into()),
        )
        .await;

        let stripe = match provider {
            Provider::Simulated => None,
            Provider::LocalStripe => Some(LocalStripe::start(logs.path()).await),
        };
        let mut payment_replicas = Vec::new();
        let mut upstreams = Vec::new();
        for i in 0..payments {
            let host = Host::create();
            let upstream = Upstream {
                grpc: SocketAddr::from((host.ip, free_port())),
                http: SocketAddr::from((host.ip, free_port())),
            };
            upstreams.push(upstream);
            let dir = dir(format!("payment-{i}"));
            let mut vars = env(
                &payment_db,
                &host.gateway.to_string(),
                &host.ip.to_string(),
                upstream.grpc.port(),
                upstream.http.port(),
            );
            if let Some(stripe) = &stripe {
                vars.extend(stripe.payment_env(&host.gateway.to_string(), &dir));
            }
            let process = ServiceProcess::start_under(
                "payment service",
                host.prefix(),
                workspace_binary("payment-service"),
                vars,
                &dir,
            )
            .await;
            payment_replicas.push(Replica { process, host });
        }
        let payment_balancer = Balancer::start(&upstreams, logs.path()).await;

        let mut order_replicas = Vec::new();
        for i in 0..orders {
            let host = Host::create();
            let gateway = host.gateway.to_string();
            let mut vars = env(
                &order_db,
                &gateway,
                &host.ip.to_string(),
                free_port(),
                free_port(),
            );
            vars.extend([
                ("SERVICE_API_KEY".to_owned(), auth::service_key()),
                (
                    "USER_SERVICE_ADDR".to_owned(),
                    format!("{gateway}:{user_port}"),
                ),
                (
                    "PAYMENT_SERVICE_ADDR".to_owned(),
                    format!("{gateway}:{}", payment_balancer.addr.port()),
                ),
            ]);
            if i == 1 {
                // Its wall clock can be stepped; its monotonic clock (timers,
                // the database clock's anchor) runs on.
                vars.extend(
                    [
                        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
                        ("FAKETIME_TIMESTAMP_FILE", clock_file.display().to_string()),
                        ("FAKETIME_CACHE_DURATION", "1".to_owned()),
                        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
                    ]
                    .map(|(k, v)| (k.to_owned(), v)),
                );
            }
            let process = ServiceProcess::start_under(
                "order service",
                host.prefix(),
                order_binary.clone(),
                vars,
                &dir(format!("order-{i}")),
            )
            .await;
            order_replicas.push(Replica { process, host });
        }
        let order_clients: Vec<_> = order_replicas
            .iter()
            .map(|o| OrderServiceClient::new(lazy_admin(o.process.grpc)))
            .collect();
        let first_order = lazy_admin(order_replicas[0].process.grpc);
        Self {
            users: UserServiceClient::new(lazy_admin(user.grpc)),
            clients: Clients {
                orders: OrderServiceClient::new(first_order.clone()),
                payments: PaymentServiceClient::new(lazy_admin(payment_balancer.addr)),
                catalog: CatalogServiceClient::new(first_order),
            },
            order_clients,
            _user: user,
            user_port,
            orders: order_replicas,
            payments: payment_replicas,
            payment_balancer,
            order_db,
            payment_db,
            _user_db: user_db,
            clock_file,
            stripe,
            logs,
        }
    }

    /// A new active user; returns its id.
    pub async fn user(&mut self, email: &str) -> String {
        crate::fixtures::shopper(&mut self.users, email).await
    }

    /// A product with `stock` units at `price_minor` USD cents.
    pub async fn product(&mut self, id: &str, price_minor: i64, stock: i64) {
        crate::fixtures::usd_product(&mut self.clients.catalog, id, price_minor, stock).await;
    }

    /// Sets order replica 1's wall clock `offset` from the machine's (a
    /// libfaketime offset: `+30s`, `-30s`, `+0s`); it applies within a
    /// second.
    pub fn step_clock(&self, offset: &str) {
        std::fs::write(&self.clock_file, format!("{offset}\n")).expect("faketime file");
    }

    /// Places `purchase` as a caller of order replica `first` does, then
    /// waits for it as that caller would: every call waits at most
    /// `answer_within` and one that fails or does not answer goes to the
    /// next replica (CreateOrder with the same `request_id`); the order is
    /// read back until it is CONFIRMED or CANCELLED, or `give_up` passed
    /// (then it counts as unfinished, not as a panic: the figures are
    /// printed whatever happened).
    pub async fn shop(
        clients: &[OrderServiceClient<AuthedChannel>],
        purchase: &Purchase,
        first: usize,
        answer_within: Duration,
        give_up: Duration,
    ) -> Shopped {
        let placed = Instant::now();
        let mut replica = first;
        let mut order = loop {
            let mut request = tonic::Request::new(purchase.request());
            request.set_timeout(answer_within);
            let answer = call(
                &clients[replica % clients.len()],
                answer_within,
                |mut c| async move { c.create_order(request).await },
            )
            .await;
            if let Some(answer) = answer {
                break answer.order.expect("order");
            }
            if placed.elapsed() >= give_up {
                return Shopped {
                    order_id: String::new(),
                    placed,
                    terminal: None,
                };
            }
            replica += 1;
        };
        loop {
            if matches!(
                order.status(),
                OrderStatus::Confirmed | OrderStatus::Cancelled
            ) {
                return Shopped {
                    order_id: order.order_id,
                    placed,
                    terminal: Some(Instant::now()),
                };
            }
            if placed.elapsed() >= give_up {
                return Shopped {
                    order_id: order.order_id,
                    placed,
                    terminal: None,
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut request = tonic::Request::new(GetOrderRequest {
                order_id: order.order_id.clone(),
            });
            request.set_timeout(answer_within);
            let read = call(
                &clients[replica % clients.len()],
                answer_within,
                |mut c| async move { c.get_order(request).await },
            )
            .await;
            match read.and_then(|r| r.order) {
                Some(read) => order = read,
                None => replica += 1,
            }
        }
    }

    /// Where each process logs.
    pub fn logs(&self) -> &std::path::Path {
        self.logs.path()
    }
}

/// One call, bounded on this side too (a frozen server never answers,
/// whatever the deadline says); `None` when it failed or did not answer.
async fn call<T, F, Fut>(
    client: &OrderServiceClient<AuthedChannel>,
    within: Duration,
    f: F,
) -> Option<T>
where
    F: FnOnce(OrderServiceClient<AuthedChannel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(within + Duration::from_millis(500), f(client.clone())).await {
        Ok(Ok(answer)) => Some(answer.into_inner()),
        _ => None,
    }
}
