//! Payments, ledger and idempotency keys in the service's database.
//!
//! Money-moving calls follow the "atomic phases" pattern: (1) claim the
//! idempotency key in a transaction (a refund also reserves its amount
//! there; see [`keys`]), (2) call the provider outside any transaction,
//! (3) record the result and mark the key finished in one transaction —
//! fenced by the claim's lock token, so a request that lost its lease can
//! no longer record anything. Leases are on the database's clock.

mod keys;

use std::time::Duration;

use mercato_api::Money;
use mercato_database::{
    Backend, Database, DbClock, KeptConnections, MigrationSource, Migrations, db_system,
};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};
use uuid::Uuid;

pub use keys::{Claim, Claimed, Operation, StoredCharge};

use crate::{
    domain::{Payment, PaymentStatus},
    error::PaymentError,
};

/// The payment service's schema.
pub const MIGRATIONS: Migrations = Migrations {
    name: "payment",
    postgres: &[
        PAYMENTS,
        MigrationSource {
            version: 20261201000002,
            description: "key outcomes",
            sql: include_str!("../../migrations/20261201000002_key_outcomes.postgres.sql"),
        },
        INTENTS,
        LEDGER_BY_REFERENCE,
    ],
    sqlite: &[
        PAYMENTS,
        MigrationSource {
            version: 20261201000002,
            description: "key outcomes",
            sql: include_str!("../../migrations/20261201000002_key_outcomes.sqlite.sql"),
        },
        INTENTS,
        LEDGER_BY_REFERENCE,
    ],
};

const INTENTS: MigrationSource = MigrationSource {
    version: 20261207000001,
    description: "provider intents",
    sql: include_str!("../../migrations/20261207000001_provider_intents.sql"),
};

const LEDGER_BY_REFERENCE: MigrationSource = MigrationSource {
    version: 20261207000002,
    description: "ledger by reference",
    sql: include_str!("../../migrations/20261207000002_ledger_by_reference.sql"),
};

const PAYMENTS: MigrationSource = MigrationSource {
    version: 20261127000002,
    description: "payments",
    sql: include_str!("../../migrations/20261127000002_payments.sql"),
};

const COLUMNS: &str = "payment_id, order_id, user_id, currency, amount_minor, refunded_minor, status, \
                       payment_method, decline_reason, created_at_us, updated_at_us";

/// Reads and writes payments and idempotency keys.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    pool: AnyPool,
    /// Where a charge's one-statement writes run (no round trip on release).
    kept: KeptConnections,
    /// Leases are read off it, whichever replica compares them.
    clock: DbClock,
    /// Postgres takes abandoned keys over skipping rows others hold.
    backend: Backend,
    /// `db.system` of its spans.
    system: &'static str,
    /// How long a claim is exclusive before a retry may take it over.
    lease: Duration,
}

impl PaymentStore {
    /// A store over an opened, migrated database.
    pub fn new(database: &Database, lease: Duration) -> Self {
        Self {
            pool: database.pool.clone(),
            kept: database.kept.clone(),
            clock: database.clock.clone(),
            system: db_system(&database.pool),
            backend: database.backend,
            lease,
        }
    }

    /// How long a claim is exclusive.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long a claim is exclusive, in µs (added to the database's now).
    fn lease_us(&self) -> i64 {
        i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX / 2)
    }

    /// This store's form of a statement built for both backends.
    fn for_backend<'s>(&self, sql: &'s [String; 2]) -> &'s str {
        match self.backend {
            Backend::Postgres => &sql[0],
            Backend::Sqlite => &sql[1],
        }
    }

    /// Measures the offset to the database's clock again.
    pub async fn sync_clock(&self) -> Result<(), PaymentError> {
        Ok(self.clock.sync().await?)
    }

    /// Phase 3 of a charge: the payment and its ledger entry, atomically with the key.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE payments", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "payments"))]
    pub async fn finish_charge(
        &self,
        claim: &Claimed,
        payment: &Payment,
        provider_reference: &str,
    ) -> Result<(), PaymentError> {
        let (kind, amount) = match payment.status {
            PaymentStatus::Declined => ("DECLINE", 0),
            _ => ("CAPTURE", payment.amount.minor),
        };
        if self.system == "postgresql" {
            return self
                .finish_charge_in_one_statement(claim, payment, kind, amount, provider_reference)
                .await;
        }
        let mut tx = self.pool.begin().await?;
        Self::finish_key(&mut tx, claim).await?;
        let sql = format!(
            "INSERT INTO payments ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        bind_payment(sqlx::query(&sql), payment)
            .execute(&mut *tx)
            .await?;
        insert_ledger(
            &mut tx,
            &payment.payment_id,
            kind,
            amount,
            &claim.key,
            provider_reference,
            self.clock.now_us(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Postgres: phase 3 of a charge as one statement (one round trip, not
    /// a transaction's five): the payment and its entry are written only
    /// if the key is still this claim's.
    async fn finish_charge_in_one_statement(
        &self,
        claim: &Claimed,
        payment: &Payment,
        kind: &str,
        amount: i64,
        provider_reference: &str,
    ) -> Result<(), PaymentError> {
        let sql = format!(
            "WITH finished AS ( \
               UPDATE idempotency_keys SET recovery_point = 'finished' \
               WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $3 \
               RETURNING 1), \
             paid AS ( \
               INSERT INTO payments ({COLUMNS}) \
               SELECT $4::text, $5::text, $6::text, $7::text, $8::bigint, $9::bigint, $10::text, $11::text, \
                      $12::text, $13::bigint, $14::bigint FROM finished RETURNING 1), \
             entry AS ( \
               INSERT INTO payment_ledger (entry_id, payment_id, kind, amount_minor, idempotency_key, provider_reference, created_at_us) \
               SELECT $15::text, $4::text, $16::text, $17::bigint, $2, $18::text, $19::bigint FROM finished RETURNING 1) \
             SELECT count(*) AS finished FROM finished"
        );
        let query = sqlx::query(&sql)
            .bind(claim.operation.as_str())
            .bind(&claim.key)
            .bind(&claim.lock_token);
        let query = bind_payment(query, payment)
            .bind(Uuid::now_v7().to_string())
            .bind(kind)
            .bind(amount)
            .bind(provider_reference)
            .bind(self.clock.now_us());
        let finished: i64 = self.kept.fetch_one(query).await?.try_get("finished")?;
        if finished == 1 {
            Ok(())
        } else {
            Err(PaymentError::KeyInProgress)
        }
    }

    /// Payments created in `[since_us, until_us)`, with their capture (for
    /// reconciliation).
    pub async fn ledger_window(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<LedgerPayment>, PaymentError> {
        let rows = sqlx::query(
            "SELECT p.payment_id, p.status, p.amount_minor, p.refunded_minor, \
                    COALESCE(l.provider_reference, '') AS reference, COALESCE(l.idempotency_key, '') AS idempotency_key \
             FROM payments p LEFT JOIN payment_ledger l ON l.payment_id = p.payment_id AND l.kind = 'CAPTURE' \
             WHERE p.created_at_us >= $1 AND p.created_at_us < $2 ORDER BY p.payment_id",
        )
        .bind(since_us)
        .bind(until_us)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ledger_payment).collect()
    }

    /// The payment that captured the provider's intent `reference`.
    pub async fn capture_of(&self, reference: &str) -> Result<Option<LedgerPayment>, PaymentError> {
        let row = sqlx::query(
            "SELECT p.payment_id, p.status, p.amount_minor, p.refunded_minor, \
                    l.provider_reference AS reference, l.idempotency_key \
             FROM payment_ledger l JOIN payments p ON p.payment_id = l.payment_id \
             WHERE l.kind = 'CAPTURE' AND l.provider_reference = $1",
        )
        .bind(reference)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ledger_payment).transpose()
    }

    /// The provider's intent a payment captured, from its ledger; `None`
    /// for a payment that captured nothing.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT payment_ledger", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "payment_ledger"))]
    pub async fn intent_of(&self, payment_id: &str) -> Result<Option<String>, PaymentError> {
        Ok(sqlx::query_scalar(
            "SELECT provider_reference FROM payment_ledger WHERE payment_id = $1 AND kind = 'CAPTURE'",
        )
        .bind(payment_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Phase 3 of a refund: move the reservation to refunded, log it, finish the key.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE payments", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "payments"))]
    pub async fn finish_refund(
        &self,
        claim: &Claimed,
        provider_reference: &str,
    ) -> Result<(), PaymentError> {
        let amount = claim.amount_minor;
        let mut tx = self.pool.begin().await?;
        Self::finish_key(&mut tx, claim).await?;
        sqlx::query(
            "UPDATE payments SET refunded_minor = refunded_minor + $2, refund_pending_minor = refund_pending_minor - $2, \
               status = CASE WHEN refunded_minor + $2 = amount_minor THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END, \
               updated_at_us = $3 \
             WHERE payment_id = $1",
        )
        .bind(&claim.payment_id)
        .bind(amount)
        .bind(self.clock.now_us())
        .execute(&mut *tx)
        .await?;
        insert_ledger(
            &mut tx,
            &claim.payment_id,
            "REFUND",
            amount,
            &claim.key,
            provider_reference,
            self.clock.now_us(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One payment.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT payments", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "payments"))]
    pub async fn get(&self, payment_id: &str) -> Result<Option<Payment>, PaymentError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM payments WHERE payment_id = $1"
        ))
        .bind(payment_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| payment_from_row(&row))
        .transpose()
    }

    /// Payments whose `column` (order_id or user_id) equals `value`, newest
    /// first, before the cursor.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT payments", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "payments"))]
    pub async fn list(
        &self,
        by: ListBy<'_>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Payment>, PaymentError> {
        let (column, value) = match by {
            ListBy::Order(id) => ("order_id", id),
            ListBy::User(id) => ("user_id", id),
        };
        let limit = i64::from(limit);
        let rows = match before {
            Some(before) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM payments WHERE {column} = $1 AND payment_id < $2 \
                     ORDER BY payment_id DESC LIMIT $3"
                ))
                .bind(value)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM payments WHERE {column} = $1 ORDER BY payment_id DESC LIMIT $2"
                ))
                .bind(value)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(payment_from_row).collect()
    }

    /// The ledger of one payment as (kind, amount) in order, for audits and tests.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT payment_ledger", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "payment_ledger"))]
    pub async fn ledger(&self, payment_id: &str) -> Result<Vec<(String, i64)>, PaymentError> {
        let rows = sqlx::query(
            "SELECT kind, amount_minor FROM payment_ledger WHERE payment_id = $1 ORDER BY created_at_us, entry_id",
        )
        .bind(payment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("amount_minor")?)))
            .collect()
    }
}

/// The filter of ListPayments.
#[derive(Debug, Clone, Copy)]
pub enum ListBy<'a> {
    Order(&'a str),
    User(&'a str),
}

async fn insert_ledger(
    tx: &mut Transaction<'static, Any>,
    payment_id: &str,
    kind: &str,
    amount: i64,
    key: &str,
    provider_reference: &str,
    created_at_us: i64,
) -> Result<(), PaymentError> {
    sqlx::query(
        "INSERT INTO payment_ledger (entry_id, payment_id, kind, amount_minor, idempotency_key, provider_reference, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(payment_id)
    .bind(kind)
    .bind(amount)
    .bind(key)
    .bind(provider_reference)
    .bind(created_at_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Binds a payment's columns, in the order of [`COLUMNS`].
fn bind_payment<'q>(
    query: mercato_database::AnyQuery<'q>,
    payment: &'q Payment,
) -> mercato_database::AnyQuery<'q> {
    query
        .bind(&payment.payment_id)
        .bind(&payment.order_id)
        .bind(&payment.user_id)
        .bind(&payment.amount.currency)
        .bind(payment.amount.minor)
        .bind(payment.refunded_minor)
        .bind(payment.status.as_str())
        .bind(&payment.payment_method)
        .bind(&payment.decline_reason)
        .bind(payment.created_at_us)
        .bind(payment.updated_at_us)
}

fn payment_from_row(row: &AnyRow) -> Result<Payment, PaymentError> {
    let status: String = row.try_get("status")?;
    Ok(Payment {
        payment_id: row.try_get("payment_id")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        amount: Money {
            currency: row.try_get("currency")?,
            minor: row.try_get("amount_minor")?,
        },
        refunded_minor: row.try_get("refunded_minor")?,
        status: PaymentStatus::from_stored(&status)
            .ok_or_else(|| PaymentError::CorruptRow(format!("unknown status {status:?}")))?,
        payment_method: row.try_get("payment_method")?,
        decline_reason: row.try_get("decline_reason")?,
        created_at_us: row.try_get("created_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}

/// A payment as reconciliation compares it with the provider's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPayment {
    pub payment_id: String,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    /// The provider's intent it captured (empty when it captured nothing).
    pub reference: String,
    /// The capture's idempotency key (empty when it captured nothing).
    pub idempotency_key: String,
}

fn ledger_payment(row: &sqlx::any::AnyRow) -> Result<LedgerPayment, PaymentError> {
    let status: String = row.try_get("status")?;
    Ok(LedgerPayment {
        payment_id: row.try_get("payment_id")?,
        status: PaymentStatus::from_stored(&status)
            .ok_or_else(|| PaymentError::CorruptRow(format!("unknown status {status:?}")))?,
        amount_minor: row.try_get("amount_minor")?,
        refunded_minor: row.try_get("refunded_minor")?,
        reference: row.try_get("reference")?,
        idempotency_key: row.try_get("idempotency_key")?,
    })
}
