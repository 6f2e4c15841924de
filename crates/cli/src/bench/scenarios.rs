//! What each scenario calls, and the data it seeds through the API first.

use std::sync::atomic::{AtomicU64, Ordering};

use mercato_proto::{
    common::v1::Money,
    order::v1::{
        CreateOrderRequest, CreateProductRequest, ListOrdersRequest, OrderItem, Product,
        catalog_service_client::CatalogServiceClient, order_service_client::OrderServiceClient,
    },
    user::v1::{CreateUserRequest, GetUserRequest, user_service_client::UserServiceClient},
};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The scenarios `--scenario` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// grpc.health.v1.Health/Check: the floor of the stack (no auth, no storage).
    Health,
    /// GetUser of one user: a cache hit, auth and telemetry on.
    GetUser,
    /// CreateUser with a fresh email each time.
    CreateUser,
    /// ListOrders, first page of 10, for a user with 20 orders.
    ListOrders,
    /// CreateOrder: the whole saga (user check, stock, charge, confirm).
    CreateOrder,
    /// 70 % get-user, 10 % each of list-orders, create-user, create-order.
    Mixed,
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Clients over every connection, picked round-robin.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    health: Vec<HealthClient<Channel>>,
    users: Vec<UserServiceClient<Authed>>,
    orders: Vec<OrderServiceClient<Authed>>,
    catalog: Vec<CatalogServiceClient<Authed>>,
}

impl Clients {
    pub(crate) fn new(
        user_channels: Vec<Channel>,
        order_channels: Vec<Channel>,
        token: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let bearer = Bearer(match token {
            "" => None,
            token => Some(format!("Bearer {token}").parse()?),
        });
        let authed = |c: &Channel| InterceptedService::new(c.clone(), bearer.clone());
        Ok(Self {
            health: user_channels
                .iter()
                .cloned()
                .map(HealthClient::new)
                .collect(),
            users: user_channels
                .iter()
                .map(|c| UserServiceClient::new(authed(c)))
                .collect(),
            orders: order_channels
                .iter()
                .map(|c| OrderServiceClient::new(authed(c)))
                .collect(),
            catalog: order_channels
                .iter()
                .map(|c| CatalogServiceClient::new(authed(c)))
                .collect(),
        })
    }

    fn pick<T: Clone>(clients: &[T], n: u64) -> T {
        clients[(n % clients.len() as u64) as usize].clone()
    }
}

/// Data the scenario seeded: ids to read, the product to order.
#[derive(Debug, Default)]
pub(crate) struct Seeded {
    user_id: String,
    product_id: String,
    /// Distinguishes this run's emails and request ids from earlier runs'.
    run: String,
    created: AtomicU64,
    /// What create-order pays with.
    payment_method: String,
}

fn code(result: Result<impl Sized, Status>) -> Result<(), Code> {
    result.map(|_| ()).map_err(|s| s.code())
}

impl Seeded {
    pub(crate) async fn prepare(
        scenario: Scenario,
        clients: &Clients,
        payment_method: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let run = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        );
        let mut seeded = Self {
            run,
            payment_method: payment_method.to_owned(),
            ..Self::default()
        };
        if scenario == Scenario::Health {
            return Ok(seeded);
        }
        let user = Clients::pick(&clients.users, 0)
            .create_user(CreateUserRequest {
                email: format!("bench-{}@example.com", seeded.run),
                full_name: "Bench".into(),
                preferences: None,
            })
            .await?
            .into_inner()
            .user
            .ok_or("CreateUser returned no user")?;
        seeded.user_id = user.user_id;
        if matches!(
            scenario,
            Scenario::ListOrders | Scenario::CreateOrder | Scenario::Mixed
        ) {
            seeded.product_id = format!("bench-{}", seeded.run);
            Clients::pick(&clients.catalog, 0)
                .create_product(CreateProductRequest {
                    product: Some(Product {
                        product_id: seeded.product_id.clone(),
                        name: "Bench".into(),
                        price: Some(Money {
                            currency_code: "USD".into(),
                            amount_minor: 100,
                        }),
                        stock: 1_000_000_000,
                        ..Product::default()
                    }),
                })
                .await?;
            for n in 0..20 {
                Clients::pick(&clients.orders, 0)
                    .create_order(seeded.order(n + 1_000_000_000))
                    .await?;
            }
        }
        Ok(seeded)
    }

    fn order(&self, n: u64) -> CreateOrderRequest {
        CreateOrderRequest {
            request_id: format!("bench-{}-{n}", self.run),
            user_id: self.user_id.clone(),
            items: vec![OrderItem {
                product_id: self.product_id.clone(),
                quantity: 1,
                unit_price: None,
            }],
            payment_method: self.payment_method.clone(),
        }
    }
}

impl Scenario {
    /// The `n`th call of the run.
    pub(crate) async fn call(self, clients: &Clients, seeded: &Seeded, n: u64) -> Result<(), Code> {
        let scenario = match self {
            Self::Mixed => match n % 10 {
                0..=6 => Self::GetUser,
                7 => Self::ListOrders,
                8 => Self::CreateUser,
                _ => Self::CreateOrder,
            },
            other => other,
        };
        match scenario {
            Self::Health | Self::Mixed => code(
                Clients::pick(&clients.health, n)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await,
            ),
            Self::GetUser => code(
                Clients::pick(&clients.users, n)
                    .get_user(GetUserRequest {
                        user_id: seeded.user_id.clone(),
                    })
                    .await,
            ),
            Self::CreateUser => {
                let k = seeded.created.fetch_add(1, Ordering::Relaxed);
                code(
                    Clients::pick(&clients.users, n)
                        .create_user(CreateUserRequest {
                            email: format!("bench-{}-{k}@example.com", seeded.run),
                            full_name: "Bench".into(),
                            preferences: None,
                        })
                        .await,
                )
            }
            Self::ListOrders => code(
                Clients::pick(&clients.orders, n)
                    .list_orders(ListOrdersRequest {
                        user_id: seeded.user_id.clone(),
                        page_size: 10,
                        ..ListOrdersRequest::default()
                    })
                    .await,
            ),
            Self::CreateOrder => code(
                Clients::pick(&clients.orders, n)
                    .create_order(seeded.order(n))
                    .await,
            ),
        }
    }
}
