//! Orders and their lines in the order database; the saga table lives here too.

use std::sync::LazyLock;

use mercato_activity::now_us;
use mercato_api::Money;
use mercato_database::{Database, KeptConnections, MigrationSource, Migrations, db_system};
use mercato_saga::{Fence, SagaRecord, SqlSagaStore};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

use crate::{
    catalog::{take_stock_ctes, take_units},
    domain::{Order, OrderLine, OrderStatus},
    error::{PlaceOrderError, StorageError},
};

/// The order service's schema: its own tables plus the saga table.
pub const MIGRATIONS: Migrations = Migrations {
    name: "order",
    postgres: SOURCES,
    sqlite: SOURCES,
};

const SOURCES: &[MigrationSource] = &[
    MigrationSource {
        version: 20261127000003,
        description: "orders",
        sql: include_str!("../migrations/20261127000003_orders.sql"),
    },
    mercato_saga::MIGRATION,
    mercato_saga::FENCING_MIGRATION,
];

const COLUMNS: &str = "order_id, user_id, currency, total_minor, status, failure_reason, payment_id, payment_method, \
                       created_at_us, updated_at_us";

/// What asking for an order's cancellation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// This call started it; run its saga.
    Started,
    /// One is under way (or done) already.
    AlreadyUnderWay,
}

/// What inserting a new order found.
#[derive(Debug)]
pub enum Inserted {
    /// A new order; its saga must be started.
    New(Order),
    /// The same request was made before: its order.
    Existing(Order),
}

/// A move of an order from one status to another ([`OrderStore::transition`]).
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    pub order_id: &'a str,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The order's failure_reason from now on.
    pub reason: &'a str,
    /// The payment to record with it, if any (else the order keeps its own).
    pub payment_id: Option<&'a str>,
    /// The order's updated_at.
    pub at_us: i64,
}

/// Reads and writes orders.
#[derive(Debug, Clone)]
pub struct OrderStore {
    pool: AnyPool,
    /// Where its one-statement writes run (no round trip on release).
    kept: KeptConnections,
    /// `db.system` of its spans.
    system: &'static str,
    /// Counts orders as they are created and change status.
    metrics: OrderMetrics,
}

/// `orders_total{status}`: orders that reached each status — `pending`
/// when created, then `confirmed` or `cancelled` — counted once, by the
/// write that made the change.
#[derive(Debug, Clone, Default)]
pub struct OrderMetrics {
    reached: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl OrderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "orders",
            "Orders that reached each status (pending when created, confirmed, cancelled)",
            metrics.reached.clone(),
        );
        metrics
    }

    fn reached(&self, status: OrderStatus) {
        let status = match status {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
        };
        self.reached.get_or_create(&vec![("status", status)]).inc();
    }
}

impl OrderStore {
    pub fn new(database: &Database) -> Self {
        Self {
            system: db_system(&database.pool),
            pool: database.pool.clone(),
            kept: database.kept.clone(),
            metrics: OrderMetrics::default(),
        }
    }

    /// The same store, counting into `metrics`.
    pub fn with_metrics(self, metrics: OrderMetrics) -> Self {
        Self { metrics, ..self }
    }

    /// Inserts the order, its lines and its saga atomically, unless the
    /// user already sent this request_id (then returns that order, or
    /// `AlreadyExists` if the request differs).
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT orders", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "orders", order.id = %order.order_id))]
    pub async fn insert(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<Inserted, PlaceOrderError> {
        let placed = if self.system == "postgresql" {
            self.insert_in_one_statement(order, request_id, fingerprint, saga)
                .await?
        } else {
            self.insert_in_transaction(order, request_id, fingerprint, saga)
                .await?
        };
        self.inserted(placed, order, request_id, fingerprint).await
    }

    /// What an insert that placed the order (or found its request_id used
    /// before, `placed` false) answers.
    async fn inserted(
        &self,
        placed: bool,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Inserted, PlaceOrderError> {
        if !placed {
            return self.existing(order, request_id, fingerprint).await;
        }
        self.metrics.reached(OrderStatus::Pending);
        Ok(Inserted::New(order.clone()))
    }

    /// Inserts the order, its lines and its saga as [`OrderStore::insert`]
    /// does, and with them takes the order's stock — the reservation step's
    /// effect, so `saga` must start after it — all or nothing. `None` when
    /// some product has too few units left: then nothing is written.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT orders", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "orders", order.id = %order.order_id))]
    pub async fn insert_with_stock(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<Option<Inserted>, PlaceOrderError> {
        let placed = if self.system == "postgresql" {
            self.insert_with_stock_in_one_statement(order, request_id, fingerprint, saga)
                .await?
        } else {
            self.insert_with_stock_in_transaction(order, request_id, fingerprint, saga)
                .await?
        };
        match placed {
            None => Ok(None),
            Some(placed) => self
                .inserted(placed, order, request_id, fingerprint)
                .await
                .map(Some),
        }
    }

    /// The order, its lines and its saga in one transaction; false if the
    /// request_id was used before.
    async fn insert_in_transaction(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        if !insert_rows(&mut tx, order, request_id, fingerprint, saga).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// [`OrderStore::insert_in_transaction`] taking the stock too: `None`
    /// (rolled back) when a product is short.
    async fn insert_with_stock_in_transaction(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<Option<bool>, StorageError> {
        let mut tx = self.pool.begin().await?;
        if !insert_rows(&mut tx, order, request_id, fingerprint, saga).await? {
            return Ok(Some(false));
        }
        // Lines are sorted by product id: concurrent orders lock rows in
        // the same order and cannot deadlock.
        for line in &order.items {
            sqlx::query(
                "INSERT INTO stock_reservations (order_id, product_id, quantity, state) VALUES ($1, $2, $3, 'reserved')",
            )
            .bind(&order.order_id)
            .bind(&line.product_id)
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?;
            if !take_units(&mut tx, &line.product_id, line.quantity).await? {
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(true))
    }

    /// Postgres: the order, its lines and its saga in one statement (one
    /// round trip instead of a transaction's five); false as above.
    async fn insert_in_one_statement(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<bool, StorageError> {
        let sql = format!(
            "WITH {placing} SELECT count(*) AS placed FROM placed",
            placing = placing_ctes(order.items.len()),
        );
        let query = bind_placing(sqlx::query(&sql), order, request_id, fingerprint, saga);
        let placed: i64 = self.kept.fetch_one(query).await?.try_get("placed")?;
        Ok(placed == 1)
    }

    /// Postgres: the order, its lines, its saga and its stock in one
    /// statement, so the hot product rows stay locked only while the server
    /// runs it and commits. `None` when a product is short (the `stock >= 0`
    /// check rolls the statement back), else whether it placed the order.
    async fn insert_with_stock_in_one_statement(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
        saga: &SagaRecord,
    ) -> Result<Option<bool>, StorageError> {
        let sql = format!(
            "WITH {placing}, \
             taken AS ( \
               INSERT INTO stock_reservations (order_id, product_id, quantity, state) \
               SELECT $1, product_id, quantity, 'reserved' FROM lines RETURNING product_id, quantity), \
             {stock} \
             SELECT placed, {guard} FROM (SELECT (SELECT count(*) FROM placed) AS placed, \
               (SELECT count(*) FROM taken) AS taken, (SELECT count(*) FROM stock) AS updated) n",
            placing = placing_ctes(order.items.len()),
            // Stamped with the order's own time ($10, its updated_at_us).
            stock = take_stock_ctes(order.items.len(), "$10"),
            // A line whose product is missing takes no stock: the statement
            // fails rather than place an order short of it (none is ever
            // deleted, and the order was priced from it).
            guard = mercato_database::rollback_unless("taken = updated"),
        );
        let query = bind_placing(sqlx::query(&sql), order, request_id, fingerprint, saga);
        match self.kept.fetch_one(query).await {
            Ok(row) => Ok(Some(row.try_get::<i64, _>("placed")? == 1)),
            Err(sqlx::Error::Database(e)) if e.is_check_violation() => Ok(None),
            Err(e) if mercato_database::rolled_itself_back(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The order an earlier call with this request_id created, if the
    /// request was the same.
    async fn existing(
        &self,
        order: &Order,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Inserted, PlaceOrderError> {
        let row = sqlx::query(
            "SELECT order_id, fingerprint FROM orders WHERE user_id = $1 AND request_id = $2",
        )
        .bind(&order.user_id)
        .bind(request_id)
        .fetch_one(&self.pool)
        .await?;
        if row.try_get::<String, _>("fingerprint")? != fingerprint {
            return Err(PlaceOrderError::RequestIdReused);
        }
        let id: String = row.try_get("order_id")?;
        Ok(Inserted::Existing(self.get(&id).await?.ok_or_else(
            || StorageError::Corrupt(format!("order {id} of a request vanished")),
        )?))
    }

    /// The order with its lines, in one query (a row per line).
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT orders", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "orders", order.id = order_id))]
    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, StorageError> {
        let rows = sqlx::query(
            "SELECT o.order_id, o.user_id, o.currency, o.total_minor, o.status, o.failure_reason, o.payment_id, \
               o.payment_method, o.created_at_us, o.updated_at_us, \
               i.product_id AS line_product_id, i.quantity AS line_quantity, i.unit_price_minor AS line_unit_price_minor \
             FROM orders o LEFT JOIN order_items i ON i.order_id = o.order_id \
             WHERE o.order_id = $1 ORDER BY i.product_id",
        )
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut order = order_from_row(first)?;
        for row in &rows {
            // An order without lines (none is stored so) has one row of NULLs.
            if let Some(product_id) = row.try_get::<Option<String>, _>("line_product_id")? {
                order.items.push(OrderLine {
                    product_id,
                    quantity: row.try_get("line_quantity")?,
                    unit_price_minor: row.try_get("line_unit_price_minor")?,
                });
            }
        }
        Ok(Some(order))
    }

    /// A user's orders, newest first, before the cursor.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT orders", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "orders"))]
    pub async fn list(
        &self,
        user_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Order>, StorageError> {
        let rows = match before {
            Some(before) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM orders WHERE user_id = $1 AND order_id < $2 ORDER BY order_id DESC LIMIT $3"
                ))
                .bind(user_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE user_id = $1 ORDER BY order_id DESC LIMIT $2"))
                    .bind(user_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut orders = rows
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // One query for the lines of the whole page, not one per order.
        let mut lines = self.lines_of(&orders).await?;
        for order in &mut orders {
            order.items = lines.remove(&order.order_id).unwrap_or_default();
        }
        Ok(orders)
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT order_items", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "order_items"))]
    async fn lines_of(
        &self,
        orders: &[Order],
    ) -> Result<std::collections::HashMap<String, Vec<OrderLine>>, StorageError> {
        let mut lines: std::collections::HashMap<String, Vec<OrderLine>> =
            std::collections::HashMap::new();
        if orders.is_empty() {
            return Ok(lines);
        }
        let placeholders: Vec<String> = (1..=orders.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT order_id, product_id, quantity, unit_price_minor FROM order_items \
             WHERE order_id IN ({}) ORDER BY order_id, product_id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String, i64, i64)>(&sql);
        for order in orders {
            query = query.bind(&order.order_id);
        }
        for (order_id, product_id, quantity, unit_price_minor) in
            query.fetch_all(&self.pool).await?
        {
            lines.entry(order_id).or_default().push(OrderLine {
                product_id,
                quantity,
                unit_price_minor,
            });
        }
        Ok(lines)
    }

    /// Starts the order's cancellation saga unless one exists.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT sagas", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "sagas"))]
    pub async fn start_cancellation(
        &self,
        saga: &SagaRecord,
    ) -> Result<Cancellation, StorageError> {
        let mut conn = self.pool.acquire().await?;
        Ok(if SqlSagaStore::insert_if_absent(&mut conn, saga).await? {
            Cancellation::Started
        } else {
            Cancellation::AlreadyUnderWay
        })
    }

    /// Records which payment paid (or tried to pay) for the order; fenced
    /// by the saga's claim, and with the step's completion when it asked.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE orders", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "orders", order.id = order_id))]
    pub async fn set_payment(
        &self,
        order_id: &str,
        payment_id: &str,
        fence: &Fence,
    ) -> Result<(), StorageError> {
        if self.system == "postgresql" {
            // One statement: no BEGIN, fence and COMMIT round trips.
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH {}, paid AS ( \
                       UPDATE orders SET payment_id = $9, updated_at_us = $10 \
                       WHERE order_id = $8 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                     SELECT count(*) AS held FROM fence",
                    mercato_saga::fence_cte("")
                )
            });
            let query = fence
                .bind_cte(sqlx::query(&SQL))
                .bind(order_id)
                .bind(payment_id)
                .bind(now_us());
            return match fence.run_cte(query, &self.kept).await? {
                true => Ok(()),
                false => Err(StorageError::Fenced),
            };
        }
        let mut tx = self.pool.begin().await?;
        if !fence.hold(&mut tx).await? {
            return Err(StorageError::Fenced);
        }
        sqlx::query("UPDATE orders SET payment_id = $2, updated_at_us = $3 WHERE order_id = $1")
            .bind(order_id)
            .bind(payment_id)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        if !fence.advance(&mut tx).await? {
            return Err(StorageError::Fenced);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves the order as `change` says; true if this call changed it.
    /// Fenced by the saga's claim; a change commits with the step's
    /// completion when it asked.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE orders", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "orders", order.id = change.order_id))]
    pub async fn transition(
        &self,
        change: &Transition<'_>,
        fence: &Fence,
    ) -> Result<bool, StorageError> {
        if self.system == "postgresql" && self.transition_in_one_statement(change, fence).await? {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await?;
        if !fence.hold(&mut tx).await? {
            return Err(StorageError::Fenced);
        }
        let done = sqlx::query(
            "UPDATE orders SET status = $3, failure_reason = $4, updated_at_us = $5, \
               payment_id = COALESCE($6, payment_id) WHERE order_id = $1 AND status = $2",
        )
        .bind(change.order_id)
        .bind(change.from.as_str())
        .bind(change.to.as_str())
        .bind(change.reason)
        .bind(change.at_us)
        .bind(change.payment_id)
        .execute(&mut *tx)
        .await?;
        let changed = done.rows_affected() == 1;
        // The step completes with the transition it asked for, not without it.
        if changed && !fence.advance(&mut tx).await? {
            return Err(StorageError::Fenced);
        }
        tx.commit().await?;
        if changed {
            self.metrics.reached(change.to);
        }
        Ok(changed)
    }

    /// Postgres: the transition and the step's completion as one statement.
    /// `false` when it changed nothing — a newer claim, or the order is not
    /// in `from` — which the transaction then tells apart.
    async fn transition_in_one_statement(
        &self,
        change: &Transition<'_>,
        fence: &Fence,
    ) -> Result<bool, StorageError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH {fence}, moved AS ( \
                   UPDATE orders SET status = $10, failure_reason = $11, updated_at_us = $12, \
                     payment_id = COALESCE($13, payment_id) \
                   WHERE order_id = $8 AND status = $9 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                 SELECT held, {guard} FROM (SELECT (SELECT count(*) FROM fence) AS held, (SELECT count(*) FROM moved) AS moved) n",
                // The completion is written only with the transition: the fence
                // checks the status it moves from (as of the statement's start)...
                fence = mercato_saga::fence_cte(
                    "AND EXISTS (SELECT 1 FROM orders WHERE order_id = $8 AND status = $9)"
                ),
                // ...and should the order have moved since, the statement fails.
                guard = mercato_database::rollback_unless("held = moved"),
            )
        });
        let query = fence
            .bind_cte(sqlx::query(&SQL))
            .bind(change.order_id)
            .bind(change.from.as_str())
            .bind(change.to.as_str())
            .bind(change.reason)
            .bind(change.at_us)
            .bind(change.payment_id);
        match fence.run_cte(query, &self.kept).await {
            Ok(true) => {
                self.metrics.reached(change.to);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) if mercato_database::rolled_itself_back(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Inserts the order, its lines and its saga in the caller's transaction;
/// false (nothing written) if the request_id was used before.
async fn insert_rows(
    tx: &mut Transaction<'static, Any>,
    order: &Order,
    request_id: &str,
    fingerprint: &str,
    saga: &SagaRecord,
) -> Result<bool, StorageError> {
    let sql = format!(
        "INSERT INTO orders ({COLUMNS}, request_id, fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT DO NOTHING"
    );
    let inserted = bind_order(sqlx::query(&sql), order, request_id, fingerprint)
        .execute(&mut **tx)
        .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    for line in &order.items {
        sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, unit_price_minor) VALUES ($1, $2, $3, $4)")
            .bind(&order.order_id)
            .bind(&line.product_id)
            .bind(line.quantity)
            .bind(line.unit_price_minor)
            .execute(&mut **tx)
            .await?;
    }
    SqlSagaStore::insert(tx, saga).await?;
    Ok(true)
}

/// Postgres CTEs that insert the order (`placed`, its id when new), its
/// `lines` (product_id, quantity of each) and its `saga` — nothing but the
/// order's insert when its request_id was used before. Parameters: $1–$12
/// the order, three per line, then the saga's twelve ([`bind_placing`]).
fn placing_ctes(lines: usize) -> String {
    let values: Vec<String> = (0..lines)
        .map(|i| {
            let at = 13 + 3 * i;
            format!("(${at}::text, ${}::bigint, ${}::bigint)", at + 1, at + 2)
        })
        .collect();
    format!(
        "placed AS ( \
           INSERT INTO orders ({COLUMNS}, request_id, fingerprint) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
           ON CONFLICT DO NOTHING RETURNING order_id), \
         lines AS ( \
           INSERT INTO order_items (order_id, product_id, quantity, unit_price_minor) \
           SELECT placed.order_id, l.product_id, l.quantity, l.unit_price_minor \
           FROM placed, (VALUES {values}) AS l (product_id, quantity, unit_price_minor) \
           RETURNING product_id, quantity), \
         {saga}",
        values = values.join(", "),
        saga = mercato_saga::insert_cte("placed", 13 + 3 * lines),
    )
}

/// Binds [`placing_ctes`]' parameters.
fn bind_placing<'q>(
    query: mercato_database::AnyQuery<'q>,
    order: &'q Order,
    request_id: &'q str,
    fingerprint: &'q str,
    saga: &'q SagaRecord,
) -> mercato_database::AnyQuery<'q> {
    let mut query = bind_order(query, order, request_id, fingerprint);
    for line in &order.items {
        query = query
            .bind(&line.product_id)
            .bind(line.quantity)
            .bind(line.unit_price_minor);
    }
    mercato_saga::bind_record(query, saga)
}

/// Binds the order's columns and the request's, in the order of `INSERT INTO orders`.
fn bind_order<'q>(
    query: mercato_database::AnyQuery<'q>,
    order: &'q Order,
    request_id: &'q str,
    fingerprint: &'q str,
) -> mercato_database::AnyQuery<'q> {
    query
        .bind(&order.order_id)
        .bind(&order.user_id)
        .bind(&order.total.currency)
        .bind(order.total.minor)
        .bind(order.status.as_str())
        .bind(&order.failure_reason)
        .bind(&order.payment_id)
        .bind(&order.payment_method)
        .bind(order.created_at_us)
        .bind(order.updated_at_us)
        .bind(request_id)
        .bind(fingerprint)
}

fn order_from_row(row: &AnyRow) -> Result<Order, StorageError> {
    let status: String = row.try_get("status")?;
    Ok(Order {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        items: Vec::new(),
        total: Money {
            currency: row.try_get("currency")?,
            minor: row.try_get("total_minor")?,
        },
        status: OrderStatus::from_stored(&status)
            .ok_or_else(|| StorageError::Corrupt(format!("order status {status:?}")))?,
        failure_reason: row.try_get("failure_reason")?,
        payment_id: row.try_get("payment_id")?,
        payment_method: row.try_get("payment_method")?,
        created_at_us: row.try_get("created_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}
