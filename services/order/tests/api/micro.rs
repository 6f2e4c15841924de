//! The suite as Kubernetes runs it: the three service binaries as real
//! processes, each on a Postgres database of its own, sharing a Redis (own
//! key prefix), with every setting at its shipped default unless a test
//! says otherwise. Each keeps its gRPC port across restarts, so its peers
//! and clients reconnect after a SIGKILL as they would to a new pod.

use std::{net::SocketAddr, path::PathBuf};

use mercato_proto::{
    order::v1::{
        catalog_service_client::CatalogServiceClient, order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use mercato_testkit::{
    Db, RedisMode, TestDatabase,
    auth::{self, AuthedChannel},
    invariants::Clients,
    localstripe::{LocalStripe, Provider},
    processes::{LogDir, ServiceProcess, free_port, local_service_env, workspace_binary},
};
use tonic::transport::Channel;

/// Three service processes and admin clients of them.
pub struct Micro {
    /// Kept running for the others.
    _user: ServiceProcess,
    pub payment: ServiceProcess,
    pub order: ServiceProcess,
    pub users: UserServiceClient<AuthedChannel>,
    pub clients: Clients,
    /// The Stripe emulator the payment service pays through, if it does.
    pub stripe: Option<LocalStripe>,
    _databases: Vec<TestDatabase>,
    /// The processes' logs and config; kept when a test fails.
    _logs: LogDir,
}

fn lazy_admin(addr: SocketAddr) -> AuthedChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    auth::with_token(channel, &auth::admin())
}

impl Micro {
    /// Starts user, payment and order service (in that order), with
    /// `order_env` added to the order service's environment.
    pub async fn start(order_env: &[(&str, &str)]) -> Self {
        Self::start_paying(order_env, Provider::Simulated).await
    }

    /// [`Micro::start`] with the payment service paying through `provider`.
    pub async fn start_paying(order_env: &[(&str, &str)], provider: Provider) -> Self {
        let databases = vec![
            TestDatabase::create(Db::Postgres).await,
            TestDatabase::create(Db::Postgres).await,
            TestDatabase::create(Db::Postgres).await,
        ];
        let logs = LogDir::new("mercato-micro-");
        let redis = RedisMode::fresh();
        let ports = [free_port(), free_port(), free_port()];
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let env = |database: &TestDatabase, port: u16| {
            local_service_env(logs.path(), port, &database.url, &redis)
        };
        let user = ServiceProcess::start(
            "user service",
            workspace_binary("user-service"),
            env(&databases[0], ports[0]),
            logs.path(),
        )
        .await;
        let mut payment_vars = env(&databases[1], ports[1]);
        let stripe = match provider {
            Provider::Simulated => None,
            Provider::LocalStripe => {
                let stripe = LocalStripe::start(logs.path()).await;
                let key = LocalStripe::key_file(logs.path());
                payment_vars.extend([
                    ("PAYMENT_PROVIDER".to_owned(), "stripe".to_owned()),
                    ("STRIPE_API_BASE".to_owned(), stripe.base_url()),
                    (
                        "STRIPE_SECRET_KEY_FILE".to_owned(),
                        key.display().to_string(),
                    ),
                ]);
                Some(stripe)
            }
        };
        let payment = ServiceProcess::start(
            "payment service",
            workspace_binary("payment-service"),
            payment_vars,
            logs.path(),
        )
        .await;
        let mut order_vars = env(&databases[2], ports[2]);
        order_vars.extend(
            [
                ("SERVICE_API_KEY", auth::service_key()),
                ("USER_SERVICE_ADDR", addr(ports[0])),
                ("PAYMENT_SERVICE_ADDR", addr(ports[1])),
            ]
            .into_iter()
            .chain(order_env.iter().map(|(k, v)| (*k, (*v).to_owned())))
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let order = ServiceProcess::start(
            "order service",
            PathBuf::from(env!("CARGO_BIN_EXE_order-service")),
            order_vars,
            logs.path(),
        )
        .await;
        let order_channel = lazy_admin(order.grpc);
        Self {
            users: UserServiceClient::new(lazy_admin(user.grpc)),
            clients: Clients {
                orders: OrderServiceClient::new(order_channel.clone()),
                payments: PaymentServiceClient::new(lazy_admin(payment.grpc)),
                catalog: CatalogServiceClient::new(order_channel),
            },
            stripe,
            _user: user,
            payment,
            order,
            _databases: databases,
            _logs: logs,
        }
    }

    /// A new active user; returns its id.
    pub async fn user(&mut self, email: &str) -> String {
        mercato_testkit::fixtures::shopper(&mut self.users, email).await
    }

    /// A product with `stock` units at `price_minor` USD cents.
    pub async fn product(&mut self, id: &str, price_minor: i64, stock: i64) {
        mercato_testkit::fixtures::usd_product(&mut self.clients.catalog, id, price_minor, stock)
            .await;
    }
}
