//! The order and catalog use cases.

use std::{collections::HashMap, time::Duration};

use mercato_activity::{ActivityEvent, ActivityFeed, EventKind, now_us};
use mercato_api::{FieldViolation, Money, pagination::Page};
use mercato_saga::{Ended, Finished, Orchestrator, SagaRecord, SagaStatus};
use serde::Deserialize as _;
use uuid::Uuid;

use crate::{
    catalog::Catalog,
    domain::{Order, OrderLine, OrderStatus, PlaceOrder, Product},
    error::{CancelOrderError, CatalogError, LookupError, PlaceOrderError, StorageError},
    sagas::{CancelContext, CancelOrderSaga, PlaceContext, PlaceOrderSaga},
    store::{Cancellation, Inserted, OrderStore},
};

fn placed(status: OrderStatus) -> bool {
    status != OrderStatus::Pending
}

/// How [`Orders::wait_until`] reads the order while it waits.
#[derive(Debug, Clone, Copy)]
struct Poll {
    /// Read before the first wait (the order may be done already).
    read_first: bool,
    /// The first pause between reads.
    first: Duration,
}

/// A saga this call just started on this runner: its end wakes the
/// caller, so reads are only the fallback for a lost lease.
const OURS: Poll = Poll {
    read_first: false,
    first: Duration::from_secs(1),
};

/// A saga already under way, maybe on another replica.
const ELSEWHERE: Poll = Poll {
    read_first: true,
    first: Duration::from_millis(100),
};

/// The order service's use cases.
#[derive(Debug, Clone)]
pub struct Orders {
    pub(crate) store: OrderStore,
    pub(crate) catalog: Catalog,
    pub(crate) place: Orchestrator<PlaceOrderSaga>,
    pub(crate) cancel: Orchestrator<CancelOrderSaga>,
    pub(crate) activity: ActivityFeed,
    /// How long an order's saga may retry before it compensates.
    pub(crate) saga_deadline: Duration,
}

impl Orders {
    /// Places an order (idempotent by request_id) and waits up to `wait` for
    /// its saga; the order comes back CONFIRMED, CANCELLED, or still PENDING
    /// (the saga goes on in the background).
    pub async fn create(&self, cmd: PlaceOrder, wait: Duration) -> Result<Order, PlaceOrderError> {
        let ids: Vec<&str> = cmd.items.iter().map(|(id, _)| id.as_str()).collect();
        let prices = self.catalog.prices(&ids).await?;
        let (items, total) = price(&cmd.items, &prices)?;
        let now = now_us();
        let order = Order {
            order_id: Uuid::now_v7().to_string(),
            user_id: cmd.user_id.clone(),
            items,
            total,
            status: OrderStatus::Pending,
            failure_reason: String::new(),
            payment_id: String::new(),
            payment_method: cmd.payment_method.clone(),
            created_at_us: now,
            updated_at_us: now,
        };
        let ctx = PlaceContext {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            items: cmd.items.clone(),
            currency: order.total.currency.clone(),
            total_minor: order.total.minor,
            payment_method: cmd.payment_method.clone(),
            payment_id: None,
            confirmed_at_us: None,
        };
        let (inserted, record) = self.insert(&order, &cmd, ctx).await?;
        match inserted {
            Inserted::New(order) => {
                self.activity
                    .announce(ActivityEvent::now(
                        &order.user_id,
                        EventKind::OrderCreated,
                        [
                            ("order_id", order.order_id.clone()),
                            ("total_minor", order.total.minor.to_string()),
                        ],
                    ))
                    .await;
                let finished = self.place.watch(&order.order_id);
                self.place.spawn(record);
                let confirmed = |ended: &Ended| confirmed(&order, ended);
                Ok(self
                    .wait_until(&order.order_id, placed, finished, confirmed, OURS, wait)
                    .await?)
            }
            Inserted::Existing(order) if order.status == OrderStatus::Pending => Ok(self
                .wait_until(
                    &order.order_id,
                    placed,
                    self.place.watch(&order.order_id),
                    unknown,
                    ELSEWHERE,
                    wait,
                )
                .await?),
            Inserted::Existing(order) => Ok(order),
        }
    }

    /// Inserts the order with its saga. The user is checked first — the
    /// saga's first step, run ahead of its record — so that the insert can
    /// take the stock as well: the saga then starts at the charge, and the
    /// order costs one commit less. When the check does not pass (a user
    /// not active, the user service unreachable) or a product is short, the
    /// order goes in alone and its saga starts from the beginning: it
    /// checks and reserves again, and retries or cancels as it always did.
    async fn insert(
        &self,
        order: &Order,
        cmd: &PlaceOrder,
        mut ctx: PlaceContext,
    ) -> Result<(Inserted, SagaRecord), PlaceOrderError> {
        let fingerprint = cmd.fingerprint();
        let deadline = Some(self.saga_deadline);
        let checked = self
            .place
            .execute_ahead(&order.order_id, &mut ctx, PlaceOrderSaga::CHECKS)
            .await;
        if checked.is_ok() {
            let mut record = self
                .place
                .new_record_after(&order.order_id, &ctx, deadline, PlaceOrderSaga::AFTER_STOCK)
                .map_err(StorageError::from)?;
            if let Some(inserted) = self
                .store
                .insert_with_stock(order, &cmd.request_id, &fingerprint, &record)
                .await?
            {
                self.place.stored(&mut record);
                return Ok((inserted, record));
            }
        }
        let mut record = self
            .place
            .new_record(&order.order_id, &ctx, deadline)
            .map_err(StorageError::from)?;
        let inserted = self
            .store
            .insert(order, &cmd.request_id, &fingerprint, &record)
            .await?;
        self.place.stored(&mut record);
        Ok((inserted, record))
    }

    /// Waits until the order's status satisfies `done` or `wait` passes,
    /// then reads it. `finished` wakes it when this runner ends the saga —
    /// and when `known` can tell the order from how the saga ended, that is
    /// the answer, not read back; reads between cover a saga that another
    /// replica (or this one's recovery) runs, every `poll.first`, doubling
    /// up to a second.
    async fn wait_until(
        &self,
        order_id: &str,
        done: fn(OrderStatus) -> bool,
        finished: Finished,
        known: impl Fn(&Ended) -> Option<Order>,
        poll: Poll,
        wait: Duration,
    ) -> Result<Order, StorageError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut finished = std::pin::pin!(finished);
        let mut ended = false;
        let mut every = poll.first;
        let mut read = poll.read_first;
        loop {
            if read {
                let order = self.store.get(order_id).await?.ok_or_else(|| {
                    StorageError::Corrupt(format!("order {order_id} vanished under its saga"))
                })?;
                if done(order.status) || tokio::time::Instant::now() >= deadline {
                    return Ok(order);
                }
            }
            read = true;
            tokio::select! {
                end = &mut finished, if !ended => {
                    if let Some(order) = end.as_ref().and_then(&known) {
                        return Ok(order);
                    }
                    ended = true;
                }
                () = tokio::time::sleep(every) => every = (every * 2).min(Duration::from_secs(1)),
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    pub async fn get(&self, order_id: &str) -> Result<Order, LookupError> {
        self.store
            .get(order_id)
            .await?
            .ok_or(LookupError::OrderNotFound)
    }

    pub async fn list(
        &self,
        user_id: &str,
        before: Option<&str>,
        page_size: u32,
    ) -> Result<Page<Order>, StorageError> {
        let fetched = self.store.list(user_id, before, page_size + 1).await?;
        Ok(Page::of(fetched, page_size, |o| o.order_id.clone()))
    }

    /// Cancels: a CONFIRMED order is refunded and restocked by the
    /// `order.cancel` saga; a CANCELLED one is returned as it is.
    pub async fn cancel(
        &self,
        order_id: &str,
        reason: &str,
        wait: Duration,
    ) -> Result<Order, CancelOrderError> {
        let order = self
            .store
            .get(order_id)
            .await?
            .ok_or(CancelOrderError::OrderNotFound)?;
        match order.status {
            OrderStatus::Cancelled => return Ok(order),
            OrderStatus::Pending => return Err(CancelOrderError::StillBeingPlaced),
            OrderStatus::Confirmed => {}
        }
        let ctx = CancelContext {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            payment_id: order.payment_id.clone(),
            currency: order.total.currency.clone(),
            total_minor: order.total.minor,
            reason: if reason.is_empty() {
                "cancelled by request".into()
            } else {
                reason.to_owned()
            },
        };
        let saga_id = format!("{order_id}:cancel");
        let mut record = self
            .cancel
            .new_record(&saga_id, &ctx, None)
            .map_err(StorageError::from)?;
        let finished = self.cancel.watch(&saga_id);
        let poll = if self.store.start_cancellation(&record).await? == Cancellation::Started {
            self.cancel.stored(&mut record);
            self.cancel.spawn(record);
            OURS
        } else {
            ELSEWHERE
        };
        Ok(self
            .wait_until(
                order_id,
                |s| s == OrderStatus::Cancelled,
                finished,
                unknown,
                poll,
                wait,
            )
            .await?)
    }

    pub async fn create_product(
        &self,
        product_id: Option<String>,
        name: String,
        price: Money,
        stock: i64,
    ) -> Result<Product, CatalogError> {
        let id = product_id.unwrap_or_else(|| Uuid::now_v7().to_string());
        self.catalog.create(id, name, price, stock).await
    }

    pub async fn get_product(&self, product_id: &str) -> Result<Product, LookupError> {
        self.catalog
            .get(product_id)
            .await?
            .ok_or(LookupError::ProductNotFound)
    }

    pub async fn list_products(
        &self,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<Page<Product>, StorageError> {
        let fetched = self.catalog.list(after, page_size + 1).await?;
        Ok(Page::of(fetched, page_size, |p| p.product_id.clone()))
    }

    pub async fn adjust_stock(
        &self,
        product_id: &str,
        delta: i64,
    ) -> Result<Product, CatalogError> {
        self.catalog.adjust_stock(product_id, delta).await
    }
}

/// The order as its saga left it, when the saga confirmed it on this
/// runner: the confirmation's time and payment are in the saga's final
/// context, and the rest is as the order was placed.
fn confirmed(placed: &Order, ended: &Ended) -> Option<Order> {
    if ended.status != SagaStatus::Completed {
        return None;
    }
    let ctx = PlaceContext::deserialize(&ended.context).ok()?;
    Some(Order {
        status: OrderStatus::Confirmed,
        failure_reason: String::new(),
        payment_id: ctx.payment_id.unwrap_or_default(),
        updated_at_us: ctx.confirmed_at_us?,
        ..placed.clone()
    })
}

/// Nothing to tell from how a saga ended: read the order.
fn unknown(_: &Ended) -> Option<Order> {
    None
}

/// The order's lines at today's prices and its total; every product must
/// exist and be priced in one currency.
fn price(
    items: &[(String, i64)],
    prices: &HashMap<String, Money>,
) -> Result<(Vec<OrderLine>, Money), PlaceOrderError> {
    let invalid =
        |field: String, why: &str| PlaceOrderError::Invalid(vec![FieldViolation::new(field, why)]);
    let mut lines = Vec::with_capacity(items.len());
    let mut currency: Option<&str> = None;
    let mut total: i64 = 0;
    for (i, (product_id, quantity)) in items.iter().enumerate() {
        let price = prices
            .get(product_id)
            .ok_or_else(|| invalid(format!("items[{i}].product_id"), "no such product"))?;
        if *currency.get_or_insert(&price.currency) != price.currency {
            return Err(invalid(
                "items".into(),
                "all products of one order must be priced in the same currency",
            ));
        }
        total = quantity
            .checked_mul(price.minor)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| invalid("items".into(), "order total is too large"))?;
        lines.push(OrderLine {
            product_id: product_id.clone(),
            quantity: *quantity,
            unit_price_minor: price.minor,
        });
    }
    let total = Money {
        currency: currency.unwrap_or_default().to_owned(),
        minor: total,
    };
    Ok((lines, total))
}
