//! Payments, ledger and idempotency keys in the service's database.
//!
//! Money-moving calls follow the "atomic phases" pattern: (1) claim the
//! idempotency key in a transaction (a refund also reserves its amount
//! there), (2) call the provider outside any transaction, (3) record the
//! result and mark the key finished in one transaction — fenced by the
//! claim's lock token, so a request that lost its lease to a retry can no
//! longer record anything. A claim whose owner died is taken over once its
//! lease expires and resumes at phase 2 (the provider de-duplicates by key).

use std::time::Duration;

use mercato_activity::now_us;
use mercato_platform::database::db_system;
use mercato_platform::{
    database::{Database, MigrationSource, Migrations},
    money::Money,
};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};
use uuid::Uuid;

use crate::{
    domain::{Payment, PaymentStatus},
    error::PaymentError,
};

/// The payment service's schema, the same SQL for both engines.
pub const MIGRATIONS: Migrations = Migrations {
    name: "payment",
    postgres: SOURCES,
    sqlite: SOURCES,
};

const SOURCES: &[MigrationSource] = &[MigrationSource {
    version: 20261127000002,
    description: "payments",
    sql: include_str!("../migrations/20261127000002_payments.sql"),
}];

const COLUMNS: &str = "payment_id, order_id, user_id, currency, amount_minor, refunded_minor, status, \
                       payment_method, decline_reason, created_at_us, updated_at_us";

/// Which kind of call a key guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Charge,
    Refund,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }
}

/// A key this request now owns; pass it back to finish or release.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub operation: Operation,
    pub key: String,
    /// Charge: the payment to create. Refund: the payment refunded.
    pub payment_id: String,
    lock_token: String,
    /// Taken over from a dead owner: earlier phases already ran.
    pub resumed: bool,
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// This request runs the operation.
    Owned(Claimed),
    /// The operation already finished: replay its payment.
    Finished { payment_id: String },
}

/// Reads and writes payments and idempotency keys.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    pool: AnyPool,
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
            system: db_system(&database.pool),
            lease,
        }
    }

    fn lease_until(&self) -> i64 {
        now_us() + i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX / 2)
    }

    /// Claims a charge key for a new payment id.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
    pub async fn claim_charge(
        &self,
        key: &str,
        fingerprint: &str,
        amount: i64,
    ) -> Result<Claim, PaymentError> {
        let mut tx = self.pool.begin().await?;
        let claim = self
            .claim_in(
                &mut tx,
                Operation::Charge,
                key,
                fingerprint,
                &Uuid::now_v7().to_string(),
                amount,
            )
            .await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// Claims a refund key and, for a fresh claim, reserves `amount` of the
    /// payment in the same transaction.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
    pub async fn claim_refund(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
        amount: &Money,
    ) -> Result<Claim, PaymentError> {
        let mut tx = self.pool.begin().await?;
        let claim = self
            .claim_in(
                &mut tx,
                Operation::Refund,
                key,
                fingerprint,
                payment_id,
                amount.minor,
            )
            .await?;
        if let Claim::Owned(c) = &claim
            && !c.resumed
        {
            let reserved = sqlx::query(
                "UPDATE payments SET refund_pending_minor = refund_pending_minor + $2, updated_at_us = $3 \
                 WHERE payment_id = $1 AND currency = $4 AND status IN ('CAPTURED', 'PARTIALLY_REFUNDED') \
                   AND refunded_minor + refund_pending_minor + $2 <= amount_minor",
            )
            .bind(payment_id)
            .bind(amount.minor)
            .bind(now_us())
            .bind(&amount.currency)
            .execute(&mut *tx)
            .await?;
            if reserved.rows_affected() == 0 {
                // Rolled back with the key: a refused refund leaves nothing behind.
                drop(tx);
                return Err(self.refund_refusal(payment_id, amount).await);
            }
        }
        tx.commit().await?;
        Ok(claim)
    }

    async fn refund_refusal(&self, payment_id: &str, amount: &Money) -> PaymentError {
        match self.get(payment_id).await {
            Ok(None) => PaymentError::NotFound,
            Ok(Some(p)) if p.amount.currency != amount.currency => {
                PaymentError::Invalid(vec![mercato_platform::grpc_errors::FieldViolation::new(
                    "amount.currency_code",
                    format!("must be the payment's currency, {}", p.amount.currency),
                )])
            }
            Ok(Some(p)) if p.status == PaymentStatus::Declined => {
                PaymentError::NotRefundable("a declined payment has nothing to refund")
            }
            Ok(Some(_)) => PaymentError::NotRefundable("amount exceeds what is left to refund"),
            Err(e) => e,
        }
    }

    async fn claim_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        operation: Operation,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<Claim, PaymentError> {
        let token = fresh_token();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
               recovery_point, lock_token, locked_until_us, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, 'started', $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(operation.as_str())
        .bind(key)
        .bind(fingerprint)
        .bind(payment_id)
        .bind(amount)
        .bind(&token)
        .bind(self.lease_until())
        .bind(now_us())
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::Owned(Claimed {
                operation,
                key: key.to_owned(),
                payment_id: payment_id.to_owned(),
                lock_token: token,
                resumed: false,
            }));
        }
        let row = sqlx::query(
            "SELECT fingerprint, payment_id, recovery_point, lock_token, locked_until_us \
             FROM idempotency_keys WHERE operation = $1 AND idempotency_key = $2",
        )
        .bind(operation.as_str())
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        let stored_fingerprint: String = row.try_get("fingerprint")?;
        let stored_payment: String = row.try_get("payment_id")?;
        if stored_fingerprint != fingerprint {
            return Err(PaymentError::KeyReused);
        }
        if row.try_get::<String, _>("recovery_point")? == "finished" {
            return Ok(Claim::Finished {
                payment_id: stored_payment,
            });
        }
        if row.try_get::<i64, _>("locked_until_us")? > now_us() {
            return Err(PaymentError::KeyInProgress);
        }
        // The owner died (or hangs) past its lease: take over, fenced by the old token.
        let old_token: String = row.try_get("lock_token")?;
        let takeover_token = fresh_token();
        let taken = sqlx::query(
            "UPDATE idempotency_keys SET lock_token = $3, locked_until_us = $4 \
             WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $5",
        )
        .bind(operation.as_str())
        .bind(key)
        .bind(&takeover_token)
        .bind(self.lease_until())
        .bind(&old_token)
        .execute(&mut **tx)
        .await?;
        if taken.rows_affected() == 0 {
            return Err(PaymentError::KeyInProgress);
        }
        tracing::info!(
            key,
            operation = operation.as_str(),
            "took over an abandoned idempotency key"
        );
        Ok(Claim::Owned(Claimed {
            operation,
            key: key.to_owned(),
            payment_id: stored_payment,
            lock_token: takeover_token,
            resumed: true,
        }))
    }

    /// Marks the key finished if this claim still owns it.
    async fn finish_key(
        tx: &mut Transaction<'static, Any>,
        claim: &Claimed,
    ) -> Result<(), PaymentError> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET recovery_point = 'finished' \
             WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $3",
        )
        .bind(claim.operation.as_str())
        .bind(&claim.key)
        .bind(&claim.lock_token)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(PaymentError::KeyInProgress)
        }
    }

    /// Phase 3 of a charge: the payment and its ledger entry, atomically with the key.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE payments", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "payments"))]
    pub async fn finish_charge(
        &self,
        claim: &Claimed,
        payment: &Payment,
        provider_reference: &str,
    ) -> Result<(), PaymentError> {
        let mut tx = self.pool.begin().await?;
        Self::finish_key(&mut tx, claim).await?;
        sqlx::query(&format!(
            "INSERT INTO payments ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
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
        .execute(&mut *tx)
        .await?;
        let (kind, amount) = match payment.status {
            PaymentStatus::Declined => ("DECLINE", 0),
            _ => ("CAPTURE", payment.amount.minor),
        };
        insert_ledger(
            &mut tx,
            &payment.payment_id,
            kind,
            amount,
            &claim.key,
            provider_reference,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Phase 3 of a refund: move the reservation to refunded, log it, finish the key.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE payments", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "payments"))]
    pub async fn finish_refund(
        &self,
        claim: &Claimed,
        amount: i64,
        provider_reference: &str,
    ) -> Result<(), PaymentError> {
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
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        insert_ledger(
            &mut tx,
            &claim.payment_id,
            "REFUND",
            amount,
            &claim.key,
            provider_reference,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provider failed: forget the claim (and a refund's reservation) so
    /// a retry starts afresh. Nothing moved.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
    pub async fn release(
        &self,
        claim: &Claimed,
        refund_amount: Option<i64>,
    ) -> Result<(), PaymentError> {
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $3",
        )
        .bind(claim.operation.as_str())
        .bind(&claim.key)
        .bind(&claim.lock_token)
        .execute(&mut *tx)
        .await?;
        if released.rows_affected() == 1
            && let Some(amount) = refund_amount
        {
            sqlx::query(
                "UPDATE payments SET refund_pending_minor = refund_pending_minor - $2, updated_at_us = $3 \
                 WHERE payment_id = $1",
            )
            .bind(&claim.payment_id)
            .bind(amount)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        }
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

fn fresh_token() -> String {
    Uuid::new_v4().to_string()
}

async fn insert_ledger(
    tx: &mut Transaction<'static, Any>,
    payment_id: &str,
    kind: &str,
    amount: i64,
    key: &str,
    provider_reference: &str,
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
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
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
