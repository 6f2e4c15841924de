//! Products and stock. Stock only changes through conditional updates, so it
//! can never go negative or be sold twice, on Postgres or SQLite.

use std::{collections::HashMap, time::Duration};

use mercato_activity::now_us;
use mercato_api::Money;
use mercato_database::{Database, KeptConnections, db_system};
use mercato_saga::Fence;
use sqlx::{AnyConnection, AnyPool, Row, any::AnyRow};

use crate::{
    domain::Product,
    error::{CatalogError, StorageError},
};

const COLUMNS: &str =
    "product_id, name, currency, price_minor, stock, created_at_us, updated_at_us";

/// Why stock could not be reserved.
#[derive(Debug)]
pub enum ReserveError {
    /// Not enough units of this product.
    OutOfStock(String),
    /// The order's reservation was given back already (its saga
    /// compensated): a stale runner must not take stock again.
    Released,
    Storage(StorageError),
}

impl From<sqlx::Error> for ReserveError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// How long a product's price is priced from memory before it is read
/// again (see [`Catalog::prices`]).
const PRICE_TTL: Duration = Duration::from_secs(60);

/// Reads and writes products and stock reservations.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    /// Where its one-statement writes run (no round trip on release).
    kept: KeptConnections,
    /// `db.system` of its spans.
    system: &'static str,
    /// Products' prices by id, for pricing orders without a read.
    prices: moka::sync::Cache<String, Money>,
}

impl Catalog {
    pub fn new(database: &Database) -> Self {
        Self {
            system: db_system(&database.pool),
            pool: database.pool.clone(),
            kept: database.kept.clone(),
            prices: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PRICE_TTL)
                .build(),
        }
    }

    /// Adds a product; `AlreadyExists` if the id is taken.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT products", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "products"))]
    pub async fn create(
        &self,
        product_id: String,
        name: String,
        price: Money,
        stock: i64,
    ) -> Result<Product, CatalogError> {
        let now = now_us();
        let product = Product {
            product_id,
            name,
            price,
            stock,
            created_at_us: now,
            updated_at_us: now,
        };
        let inserted = sqlx::query(&format!(
            "INSERT INTO products ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
        ))
        .bind(&product.product_id)
        .bind(&product.name)
        .bind(&product.price.currency)
        .bind(product.price.minor)
        .bind(product.stock)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(CatalogError::ProductIdTaken);
        }
        Ok(product)
    }

    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT products", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "products"))]
    pub async fn get(&self, product_id: &str) -> Result<Option<Product>, StorageError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM products WHERE product_id = $1"
        ))
        .bind(product_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| product_from_row(&r))
        .transpose()
    }

    /// The products with these ids (at most a hundred), by id; unknown ids are absent.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT products", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "products"))]
    pub async fn get_many(&self, ids: &[&str]) -> Result<HashMap<String, Product>, StorageError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE product_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| product_from_row(row).map(|p| (p.product_id.clone(), p)))
            .collect()
    }

    /// The prices of the products with these ids (at most a hundred), by
    /// id; unknown ids are absent. A price never changes (no call changes
    /// it) and a product is never deleted, so prices are kept in memory
    /// once read: an order is priced without a query. They are read again
    /// after [`PRICE_TTL`] all the same, so a price corrected in the
    /// database by hand is picked up.
    pub async fn prices(&self, ids: &[&str]) -> Result<HashMap<String, Money>, StorageError> {
        let mut prices = HashMap::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match self.prices.get(*id) {
                Some(price) => drop(prices.insert((*id).to_owned(), price)),
                None => unknown.push(*id),
            }
        }
        for (id, product) in self.get_many(&unknown).await? {
            self.prices.insert(id.clone(), product.price.clone());
            prices.insert(id, product.price);
        }
        Ok(prices)
    }

    /// Up to `limit` products with ids after `after`, by id.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT products", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "products"))]
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Product>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM products WHERE product_id > $1 ORDER BY product_id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(product_from_row).collect()
    }

    /// Adds `delta` to the stock unless it would go negative.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE products", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "products"))]
    pub async fn adjust_stock(
        &self,
        product_id: &str,
        delta: i64,
    ) -> Result<Product, CatalogError> {
        let updated = sqlx::query(&format!(
            "UPDATE products SET stock = stock + $2, updated_at_us = $3 WHERE product_id = $1 AND stock + $2 >= 0 \
             RETURNING {COLUMNS}"
        ))
        .bind(product_id)
        .bind(delta)
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(row) => Ok(product_from_row(&row)?),
            None if self.get(product_id).await?.is_some() => Err(CatalogError::StockBelowZero),
            None => Err(CatalogError::ProductNotFound),
        }
    }

    /// Takes the order's units in one transaction: all lines or none.
    /// Idempotent per order: lines already reserved are skipped, and a
    /// reservation already released is never taken again. Fenced by the
    /// saga's claim; the step's completion commits with it when the step
    /// asked ([`Fence::complete_with`]).
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE products", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "products"))]
    pub async fn reserve(
        &self,
        order_id: &str,
        items: &[(String, i64)],
        fence: &Fence,
    ) -> Result<(), ReserveError> {
        if self.system == "postgresql"
            && self
                .reserve_in_one_statement(order_id, items, fence)
                .await?
        {
            return Ok(());
        }
        self.reserve_in_transaction(order_id, items, fence).await
    }

    /// Postgres: the reservation as one statement, so the hot product rows
    /// stay locked only while the server runs it and commits, not for the
    /// round trips to this service between the `UPDATE` and the `COMMIT`
    /// (which bounded the orders per second of one product). `Ok(false)`
    /// when it did nothing for a reason [`Catalog::reserve_in_transaction`]
    /// tells apart: a newer claim, a released reservation, too little
    /// stock (the `stock >= 0` check rolls the statement back).
    async fn reserve_in_one_statement(
        &self,
        order_id: &str,
        items: &[(String, i64)],
        fence: &Fence,
    ) -> Result<bool, ReserveError> {
        // $1–$7 are the fence's, $8 the order, $9 now, then (product, quantity) pairs.
        let wanted: Vec<String> = (0..items.len())
            .map(|i| format!("(${}::text, ${}::bigint)", 10 + 2 * i, 11 + 2 * i))
            .collect();
        let sql = format!(
            "WITH wanted (product_id, quantity) AS (VALUES {wanted}), {fence}, \
             taken AS ( \
               INSERT INTO stock_reservations (order_id, product_id, quantity, state) \
               SELECT $8, product_id, quantity, 'reserved' FROM wanted WHERE EXISTS (SELECT 1 FROM fence) \
               ON CONFLICT DO NOTHING RETURNING product_id, quantity), \
             {stock} \
             SELECT held, {guard} FROM (SELECT (SELECT count(*) FROM fence) AS held, \
               (SELECT count(*) FROM taken) AS taken, (SELECT count(*) FROM stock) AS updated) n",
            fence = mercato_saga::fence_cte(
                // A reservation given back (its saga compensated) is never
                // taken again; every product must exist (the transaction
                // reports the one that does not).
                "AND NOT EXISTS (SELECT 1 FROM stock_reservations WHERE order_id = $8 AND state = 'released') \
                 AND NOT EXISTS (SELECT 1 FROM wanted w WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.product_id = w.product_id))"
            ),
            wanted = wanted.join(", "),
            stock = take_stock_ctes(items.len(), "$9"),
            // Every reservation taken takes its stock (it cannot be
            // otherwise: the fence found every product, none is ever deleted).
            guard = mercato_database::rollback_unless("taken = updated"),
        );
        let mut query = fence
            .bind_cte(sqlx::query(&sql))
            .bind(order_id)
            .bind(now_us());
        for (product_id, quantity) in items {
            query = query.bind(product_id).bind(quantity);
        }
        match fence.run_cte(query, &self.kept).await {
            Ok(held) => Ok(held),
            Err(sqlx::Error::Database(e)) if e.is_check_violation() => Ok(false),
            Err(e) if mercato_database::rolled_itself_back(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The reservation as a transaction of several statements (SQLite, and
    /// Postgres when the single statement did nothing: it finds out why).
    async fn reserve_in_transaction(
        &self,
        order_id: &str,
        items: &[(String, i64)],
        fence: &Fence,
    ) -> Result<(), ReserveError> {
        let mut tx = self.pool.begin().await?;
        // The step's completion goes first: every failure below rolls the
        // whole transaction back, and the hot product rows stay locked
        // only from their UPDATE to the commit.
        if !fence.hold(&mut tx).await? || !fence.advance(&mut tx).await? {
            return Err(ReserveError::Storage(StorageError::Fenced));
        }
        // Items are sorted by product id, so concurrent orders lock rows in
        // the same order and cannot deadlock.
        for (product_id, quantity) in items {
            let new = sqlx::query(
                "INSERT INTO stock_reservations (order_id, product_id, quantity, state) VALUES ($1, $2, $3, 'reserved') \
                 ON CONFLICT DO NOTHING",
            )
            .bind(order_id)
            .bind(product_id)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
            if new.rows_affected() == 0 {
                let state: String = sqlx::query_scalar(
                    "SELECT state FROM stock_reservations WHERE order_id = $1 AND product_id = $2",
                )
                .bind(order_id)
                .bind(product_id)
                .fetch_one(&mut *tx)
                .await?;
                if state == "released" {
                    return Err(ReserveError::Released);
                }
                continue;
            }
            if !take_units(&mut tx, product_id, *quantity).await? {
                return Err(ReserveError::OutOfStock(product_id.clone()));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives back what the order reserved, once. A no-op when nothing was
    /// reserved. Fenced by the saga's claim.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE products", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "products"))]
    pub async fn release(&self, order_id: &str, fence: &Fence) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        if !fence.hold(&mut tx).await? {
            return Err(StorageError::Fenced);
        }
        let reserved: Vec<(String, i64)> = sqlx::query_as(
            "SELECT product_id, quantity FROM stock_reservations WHERE order_id = $1 AND state = 'reserved' ORDER BY product_id",
        )
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await?;
        for (product_id, quantity) in reserved {
            let released = sqlx::query(
                "UPDATE stock_reservations SET state = 'released' WHERE order_id = $1 AND product_id = $2 AND state = 'reserved'",
            )
            .bind(order_id)
            .bind(&product_id)
            .execute(&mut *tx)
            .await?;
            if released.rows_affected() == 1 {
                sqlx::query("UPDATE products SET stock = stock + $2, updated_at_us = $3 WHERE product_id = $1")
                    .bind(&product_id)
                    .bind(quantity)
                    .bind(now_us())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Postgres CTEs `locked` and `stock` that take the units of every row of
/// a CTE `taken (product_id, quantity)` — the reservations a statement
/// just inserted, `lines` of them — from their products' stock, stamping
/// them with the parameter `now`. Select `(SELECT count(*) FROM stock)`
/// and make the statement fail unless it equals the reservations taken.
/// A product left below zero fails the statement on `stock >= 0`.
pub(crate) fn take_stock_ctes(lines: usize, now: &str) -> String {
    // Several products are locked in id order, as the transaction does, so
    // that concurrent orders cannot deadlock. One needs no order, and
    // skipping the extra lock of its (hot) row is worth a sixth of the
    // statement's throughput.
    let locked = if lines > 1 {
        "locked AS ( \
           SELECT p.product_id, t.quantity FROM products p JOIN taken t ON t.product_id = p.product_id \
           ORDER BY p.product_id FOR UPDATE OF p),"
    } else {
        "locked AS (SELECT product_id, quantity FROM taken),"
    };
    format!(
        "{locked} \
         stock AS ( \
           UPDATE products SET stock = products.stock - locked.quantity, updated_at_us = {now} \
           FROM locked WHERE products.product_id = locked.product_id RETURNING 1)"
    )
}

/// Takes `quantity` units of a product in the caller's transaction; false
/// (and nothing taken) when fewer are left.
pub(crate) async fn take_units(
    conn: &mut AnyConnection,
    product_id: &str,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE products SET stock = stock - $2, updated_at_us = $3 WHERE product_id = $1 AND stock >= $2",
    )
    .bind(product_id)
    .bind(quantity)
    .bind(now_us())
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

fn product_from_row(row: &AnyRow) -> Result<Product, StorageError> {
    Ok(Product {
        product_id: row.try_get("product_id")?,
        name: row.try_get("name")?,
        price: Money {
            currency: row.try_get("currency")?,
            minor: row.try_get("price_minor")?,
        },
        stock: row.try_get("stock")?,
        created_at_us: row.try_get("created_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}
