//! `order.v1.OrderService` and `order.v1.CatalogService` over [`Orders`].

use std::time::Duration;

use mercato_api::{Amounts, FieldViolation, Money, pagination};
use mercato_auth::{Principal, caller};
use mercato_breaker::deadline;
use mercato_proto::order::v1::{
    self as pb, catalog_service_server::CatalogService, order_service_server::OrderService,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::{self, Order, OrderStatus, Product},
    error::{InvalidRequest, LookupError},
    experiments::PageSizeExperiment,
    orders::Orders,
};
use mercato_experiment::propagation::CallVariants;

/// The gRPC face of the order service (both services share it).
#[derive(Debug, Clone)]
pub struct OrderGrpc {
    orders: Orders,
    /// Longest CreateOrder/CancelOrder wait when the call has no deadline.
    max_wait: Duration,
    /// ListProducts' default page size, by A/B experiment.
    page_size: PageSizeExperiment,
}

impl OrderGrpc {
    pub fn new(orders: Orders, max_wait: Duration, page_size: PageSizeExperiment) -> Self {
        Self {
            orders,
            max_wait,
            page_size,
        }
    }

    /// The order, if the caller may see it; PERMISSION_DENIED for other
    /// users' orders and, for them, for ids that do not exist (AIP-211).
    async fn owned_order(&self, principal: &Principal, id: &str) -> Result<Order, Status> {
        match self.orders.get(id).await {
            Ok(order) => {
                principal.ensure_access(&order.user_id)?;
                Ok(order)
            }
            Err(LookupError::OrderNotFound) => Err(principal.not_found("order")),
            Err(e) => Err(e.into()),
        }
    }

    /// How long to wait for a saga: what is left of the caller's deadline
    /// (set by the server's deadline layer) minus a margin to answer in
    /// time, capped by `max_wait`.
    fn wait_budget(&self) -> Duration {
        let margin = Duration::from_millis(100);
        deadline::current().map_or(self.max_wait, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
                .saturating_sub(margin)
                .min(self.max_wait)
        })
    }
}

fn invalid(violations: Vec<FieldViolation>) -> Status {
    InvalidRequest(violations).into()
}

fn order_id(value: &str) -> Result<String, Status> {
    domain::validate_uuid("order_id", value).map_err(|v| invalid(vec![v]))
}

fn product_id(value: &str) -> Result<String, Status> {
    domain::validate_product_id(value).map_err(|v| invalid(vec![v]))
}

#[tonic::async_trait]
impl OrderService for OrderGrpc {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let wait = self.wait_budget();
        let principal = caller(&request)?;
        let req = request.into_inner();
        let items: Vec<(String, i32)> = req
            .items
            .iter()
            .map(|i| (i.product_id.clone(), i.quantity))
            .collect();
        let cmd = domain::validate_place_order(
            &req.request_id,
            &req.user_id,
            &items,
            &req.payment_method,
        )
        .map_err(invalid)?;
        principal.ensure_access(&cmd.user_id)?;
        let order = self.orders.create(cmd, wait).await?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order_to_pb(&order)),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let id = order_id(&request.get_ref().order_id)?;
        let order = self.owned_order(&caller(&request)?, &id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_to_pb(&order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let req = request.get_ref();
        let (user, size, before) = match (
            domain::validate_uuid("user_id", &req.user_id),
            pagination::page_size(req.page_size),
            pagination::decode_token("orders", &req.page_token),
        ) {
            (Ok(u), Ok(s), Ok(b)) => (u, s, b),
            (a, b, c) => {
                return Err(invalid(
                    [a.err(), b.err(), c.err()].into_iter().flatten().collect(),
                ));
            }
        };
        caller(&request)?.ensure_access(&user)?;
        let page = self.orders.list(&user, before.as_deref(), size).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: page.items.iter().map(order_to_pb).collect(),
            next_page_token: page.next_token("orders"),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let wait = self.wait_budget();
        let req = request.get_ref();
        let id = order_id(&req.order_id)?;
        if req.reason.chars().count() > 500 {
            return Err(invalid(vec![FieldViolation::new(
                "reason",
                "must be at most 500 characters",
            )]));
        }
        self.owned_order(&caller(&request)?, &id).await?;
        let order = self.orders.cancel(&id, &req.reason, wait).await?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order_to_pb(&order)),
        }))
    }
}

#[tonic::async_trait]
impl CatalogService for OrderGrpc {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let Some(p) = request.into_inner().product else {
            return Err(invalid(vec![FieldViolation::new("product", "is required")]));
        };
        let id = if p.product_id.is_empty() {
            Ok(None)
        } else {
            domain::validate_product_id(&p.product_id)
                .map(Some)
                .map_err(|mut v| {
                    v.field = "product.product_id".into();
                    v
                })
        };
        let stock = if p.stock >= 0 {
            Ok(p.stock)
        } else {
            Err(FieldViolation::new("product.stock", "must not be negative"))
        };
        let (id, name, price, stock) = match (
            id,
            domain::validate_product_name(&p.name),
            money_from_pb("product.price", p.price.as_ref(), Amounts::NonNegative),
            stock,
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (a, b, c, d) => {
                return Err(invalid(
                    [a.err(), b.err(), c.err(), d.err()]
                        .into_iter()
                        .flatten()
                        .collect(),
                ));
            }
        };
        let product = self.orders.create_product(id, name, price, stock).await?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product_to_pb(&product)),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = product_id(&request.get_ref().product_id)?;
        let product = self.orders.get_product(&id).await?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product_to_pb(&product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let req = request.get_ref();
        let (mut size, after) = match (
            pagination::page_size(req.page_size),
            pagination::decode_token("products", &req.page_token),
        ) {
            (Ok(s), Ok(a)) => (s, a),
            (a, b) => return Err(invalid([a.err(), b.err()].into_iter().flatten().collect())),
        };
        if req.page_size == 0
            && let Some(experimental) = self
                .page_size
                .page_size(
                    &caller(&request)?.subject,
                    request.extensions().get::<CallVariants>(),
                )
                .await
        {
            size = experimental;
        }
        let page = self.orders.list_products(after.as_deref(), size).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.items.iter().map(product_to_pb).collect(),
            next_page_token: page.next_token("products"),
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let req = request.get_ref();
        let id = product_id(&req.product_id)?;
        if req.delta == 0 {
            return Err(invalid(vec![FieldViolation::new(
                "delta",
                "must not be zero",
            )]));
        }
        let product = self.orders.adjust_stock(&id, req.delta).await?;
        Ok(Response::new(pb::AdjustStockResponse {
            product: Some(product_to_pb(&product)),
        }))
    }
}

fn order_to_pb(o: &Order) -> pb::Order {
    let status = match o.status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    };
    pb::Order {
        order_id: o.order_id.clone(),
        user_id: o.user_id.clone(),
        items: o
            .items
            .iter()
            .map(|l| pb::OrderItem {
                product_id: l.product_id.clone(),
                quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
                unit_price: Some(money_to_pb(&Money {
                    currency: o.total.currency.clone(),
                    minor: l.unit_price_minor,
                })),
            })
            .collect(),
        total: Some(money_to_pb(&o.total)),
        status: status.into(),
        failure_reason: o.failure_reason.clone(),
        payment_id: o.payment_id.clone(),
        created_at: Some(timestamp(o.created_at_us)),
        updated_at: Some(timestamp(o.updated_at_us)),
    }
}

fn product_to_pb(p: &Product) -> pb::Product {
    pb::Product {
        product_id: p.product_id.clone(),
        name: p.name.clone(),
        price: Some(money_to_pb(&p.price)),
        stock: p.stock,
        created_at: Some(timestamp(p.created_at_us)),
        updated_at: Some(timestamp(p.updated_at_us)),
    }
}

/// A `google.protobuf.Timestamp` of epoch microseconds.
fn timestamp(us: i64) -> prost_types::Timestamp {
    let (seconds, nanos) = mercato_api::time::to_parts(us);
    prost_types::Timestamp { seconds, nanos }
}

/// The amount at `field` of a request, validated.
fn money_from_pb(
    field: &str,
    value: Option<&mercato_proto::common::v1::Money>,
    allowed: Amounts,
) -> Result<Money, FieldViolation> {
    Money::new(
        field,
        value.map(|m| (m.currency_code.as_str(), m.amount_minor)),
        allowed,
    )
}

/// The wire form of an amount.
fn money_to_pb(money: &Money) -> mercato_proto::common::v1::Money {
    mercato_proto::common::v1::Money {
        currency_code: money.currency.clone(),
        amount_minor: money.minor,
    }
}
