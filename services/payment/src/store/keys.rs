//! Idempotency keys: claiming one (phase 1), taking over an abandoned one,
//! voiding one, and letting one go.
//!
//! A key is `started` while a request owns it (until `locked_until_us`, on
//! the database's clock, fenced by `lock_token`), `finished` once its result
//! is recorded, and — charge keys only — `voided` once closed for good
//! without a charge. A `started` key whose lease ran out was abandoned: its
//! owner died, or its provider call's outcome is unknown.

use std::sync::LazyLock;

use mercato_database::{AnyQuery, Backend};
use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyConnection, Row, Transaction};
use uuid::Uuid;

use super::PaymentStore;
use crate::{
    domain::{ChargeCommand, PaymentStatus, RefundRefusal},
    error::PaymentError,
};
use mercato_api::Money;

/// Which kind of call a key guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Charge,
    Refund,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }

    fn from_stored(value: &str) -> Option<Self> {
        match value {
            "charge" => Some(Self::Charge),
            "refund" => Some(Self::Refund),
            _ => None,
        }
    }
}

/// The charge a key guards, stored with it so that a charge found later
/// at the provider (reconciliation) can be recorded without its caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCharge {
    pub order_id: String,
    pub user_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub payment_method: String,
}

impl From<&ChargeCommand> for StoredCharge {
    fn from(cmd: &ChargeCommand) -> Self {
        Self {
            order_id: cmd.order_id.clone(),
            user_id: cmd.user_id.clone(),
            currency: cmd.amount.currency.clone(),
            amount_minor: cmd.amount.minor,
            payment_method: cmd.payment_method.clone(),
        }
    }
}

impl StoredCharge {
    pub fn amount(&self) -> Money {
        Money {
            currency: self.currency.clone(),
            minor: self.amount_minor,
        }
    }
}

/// A key this request now owns; pass it back to finish, release, void or unlock it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub operation: Operation,
    pub key: String,
    /// Charge: the payment to create. Refund: the payment refunded.
    pub payment_id: String,
    /// Refund: the amount reserved (fixed at the first claim).
    pub amount_minor: i64,
    /// Charge: what is being charged.
    pub charge: Option<StoredCharge>,
    pub(super) lock_token: String,
    /// Charge: the provider's intent, once created and recorded
    /// ([`PaymentStore::record_intent`]), or from the claim on when the
    /// provider names intents by our key; `None` before — then no confirm
    /// was ever sent under this key.
    pub intent_id: Option<String>,
    /// Taken over from an owner that died or never learnt the outcome:
    /// the provider may already have acted on this key.
    pub resumed: bool,
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// This request runs the operation.
    Owned(Claimed),
    /// The operation already finished: replay its payment.
    Finished { payment_id: String },
    /// A charge key closed for good: no charge may be made with it.
    Voided,
}

/// A row of `idempotency_keys` as found.
struct KeyRow {
    fingerprint: String,
    payment_id: String,
    recovery_point: String,
    lock_token: String,
    locked_until_us: i64,
    amount_minor: i64,
    request: String,
    intent_id: String,
}

/// The columns of a key claimed afresh.
struct NewKey<'a> {
    operation: Operation,
    key: &'a str,
    fingerprint: &'a str,
    payment_id: &'a str,
    amount: i64,
    /// The charge's request as stored (empty for other operations).
    request: &'a str,
    /// The charge's intent, when named before it is created (or empty).
    intent_id: &'a str,
}

/// `sql` with `{now}` as the database's clock, for Postgres and SQLite:
/// a lease is stamped by the statement that writes it, not before the
/// statement waited for a connection (nor on a replica's clock).
fn stamped(sql: &str) -> [String; 2] {
    [Backend::Postgres, Backend::Sqlite].map(|backend| sql.replace("{now}", backend.now_us_sql()))
}

fn fresh_token() -> String {
    Uuid::new_v4().to_string()
}

impl PaymentStore {
    /// Claims a charge key for a new payment id; `intent_id` is the id of
    /// its intent when the provider names intents by our key (recorded with
    /// the claim, before anything is sent).
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
    pub async fn claim_charge(
        &self,
        cmd: &ChargeCommand,
        intent_id: Option<&str>,
    ) -> Result<Claim, PaymentError> {
        let stored = StoredCharge::from(cmd);
        let request =
            serde_json::to_string(&stored).map_err(|e| PaymentError::CorruptRow(e.to_string()))?;
        let payment_id = Uuid::now_v7().to_string();
        let fingerprint = cmd.fingerprint();
        let new = NewKey {
            operation: Operation::Charge,
            key: &cmd.idempotency_key,
            fingerprint: &fingerprint,
            payment_id: &payment_id,
            amount: cmd.amount.minor,
            request: &request,
            intent_id: intent_id.unwrap_or_default(),
        };
        // A new key (nearly every charge) is claimed by its insert alone,
        // one round trip; a key seen before is looked at in a transaction.
        let (insert, claim) = self.key_insert(&new)?;
        if self.kept.execute(insert).await?.rows_affected() == 1 {
            return Ok(claim);
        }
        let mut tx = self.pool.begin().await?;
        let claim = self.claim_in(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// Claims a refund key and, for a fresh claim, reserves its amount (the
    /// one asked for, or everything left) in the same transaction.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
    pub async fn claim_refund(
        &self,
        key: &str,
        fingerprint: &str,
        payment_id: &str,
        amount: Option<&Money>,
    ) -> Result<Claim, PaymentError> {
        let mut tx = self.pool.begin().await?;
        let claim = self
            .claim_in(
                &mut tx,
                &NewKey {
                    operation: Operation::Refund,
                    key,
                    fingerprint,
                    payment_id,
                    amount: amount.map_or(0, |a| a.minor),
                    request: "",
                    intent_id: "",
                },
            )
            .await?;
        let claim = match claim {
            Claim::Owned(mut c) if !c.resumed => {
                // Rolled back with the key on refusal: a refused refund leaves nothing behind.
                c.amount_minor = self.reserve_refund(&mut tx, payment_id, amount).await?;
                sqlx::query(
                    "UPDATE idempotency_keys SET amount_minor = $3 WHERE operation = 'refund' AND idempotency_key = $1 \
                       AND lock_token = $2",
                )
                .bind(key)
                .bind(&c.lock_token)
                .bind(c.amount_minor)
                .execute(&mut *tx)
                .await?;
                Claim::Owned(c)
            }
            other => other,
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Adds the refund to the payment's pending refunds if it fits; returns
    /// the amount reserved.
    async fn reserve_refund(
        &self,
        tx: &mut Transaction<'static, Any>,
        payment_id: &str,
        amount: Option<&Money>,
    ) -> Result<i64, PaymentError> {
        let row = sqlx::query(
            "SELECT currency, amount_minor, refunded_minor, refund_pending_minor, status FROM payments WHERE payment_id = $1",
        )
        .bind(payment_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(PaymentError::NotFound)?;
        let currency: String = row.try_get("currency")?;
        let captured: i64 = row.try_get("amount_minor")?;
        let refunded: i64 = row.try_get("refunded_minor")?;
        let pending: i64 = row.try_get("refund_pending_minor")?;
        let status: String = row.try_get("status")?;
        let status = PaymentStatus::from_stored(&status)
            .ok_or_else(|| PaymentError::CorruptRow(format!("unknown status {status:?}")))?;
        if let Some(amount) = amount
            && amount.currency != currency
        {
            return Err(PaymentError::Invalid(vec![
                mercato_api::FieldViolation::new(
                    "amount.currency_code",
                    format!("must be the payment's currency, {currency}"),
                ),
            ]));
        }
        let wanted = amount.map(|a| a.minor);
        if let Some(refusal) = RefundRefusal::of(status, captured, refunded, pending, wanted) {
            return Err(PaymentError::NotRefundable(refusal));
        }
        let reserve = wanted.unwrap_or(captured - refunded - pending);
        // Conditional on the balances just read: a concurrent refund that
        // got in between makes this one retry (ABORTED) instead of overdrawing.
        let reserved = sqlx::query(
            "UPDATE payments SET refund_pending_minor = refund_pending_minor + $2, updated_at_us = $3 \
             WHERE payment_id = $1 AND refunded_minor = $4 AND refund_pending_minor = $5",
        )
        .bind(payment_id)
        .bind(reserve)
        .bind(self.clock.now_us())
        .bind(refunded)
        .bind(pending)
        .execute(&mut **tx)
        .await?;
        if reserved.rows_affected() == 0 {
            return Err(PaymentError::KeyInProgress);
        }
        Ok(reserve)
    }

    /// Closes a charge key for good unless it charged: `Voided` when no
    /// charge was ever made with it, `Finished` when one was, `Owned` (a
    /// takeover) when its last owner's outcome is unknown and must be
    /// looked up before deciding.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
    pub async fn claim_void(&self, key: &str) -> Result<Claim, PaymentError> {
        let now = self.clock.now_us();
        let mut tx = self.pool.begin().await?;
        let tombstone = sqlx::query(
            "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
               recovery_point, lock_token, locked_until_us, created_at_us) \
             VALUES ('charge', $1, '', '', 0, 'voided', '', 0, $2) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let claim = if tombstone.rows_affected() == 1 {
            Claim::Voided
        } else {
            let row = Self::key_row(&mut tx, Operation::Charge, key).await?;
            self.claim_existing(&mut tx, Operation::Charge, key, row)
                .await?
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn claim_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        new: &NewKey<'_>,
    ) -> Result<Claim, PaymentError> {
        if let Some(claim) = self.insert_key(tx, new).await? {
            return Ok(claim);
        }
        let row = Self::key_row(tx, new.operation, new.key).await?;
        if row.recovery_point != "voided" && row.fingerprint != new.fingerprint {
            return Err(PaymentError::KeyReused);
        }
        self.claim_existing(tx, new.operation, new.key, row).await
    }

    /// Inserts the key as claimed by a fresh token; `None` if it exists.
    async fn insert_key(
        &self,
        conn: &mut AnyConnection,
        new: &NewKey<'_>,
    ) -> Result<Option<Claim>, PaymentError> {
        let (insert, claim) = self.key_insert(new)?;
        Ok((insert.execute(conn).await?.rows_affected() == 1).then_some(claim))
    }

    /// The insert that claims a new key, and the claim it makes when it
    /// inserts a row (nothing when the key exists).
    fn key_insert<'q>(&self, new: &NewKey<'q>) -> Result<(AnyQuery<'q>, Claim), PaymentError> {
        // Parsed first: nothing after the insert may fail once it committed.
        let charge = parse_request(new.request)?;
        let token = fresh_token();
        static INSERT: LazyLock<[String; 2]> = LazyLock::new(|| {
            stamped(
                "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
                   recovery_point, lock_token, locked_until_us, created_at_us, request, intent_id) \
                 VALUES ($1, $2, $3, $4, $5, 'started', $6, {now} + $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
        });
        let insert = sqlx::query(self.for_backend(&INSERT))
            .bind(new.operation.as_str())
            .bind(new.key)
            .bind(new.fingerprint)
            .bind(new.payment_id)
            .bind(new.amount)
            .bind(token.clone())
            .bind(self.lease_us())
            .bind(self.clock.now_us())
            .bind(new.request)
            .bind(new.intent_id);
        let claim = Claim::Owned(Claimed {
            operation: new.operation,
            key: new.key.to_owned(),
            payment_id: new.payment_id.to_owned(),
            amount_minor: new.amount,
            charge,
            lock_token: token,
            intent_id: Some(new.intent_id.to_owned()).filter(|id| !id.is_empty()),
            resumed: false,
        });
        Ok((insert, claim))
    }

    async fn key_row(
        tx: &mut Transaction<'static, Any>,
        operation: Operation,
        key: &str,
    ) -> Result<KeyRow, PaymentError> {
        Self::key_row_where(tx, operation, key, "")
            .await?
            .ok_or_else(|| PaymentError::from(sqlx::Error::RowNotFound))
    }

    /// The key's row, read with `lock` (SQL after the `WHERE`, e.g. a
    /// row-locking clause); `None` when no row matches.
    async fn key_row_where(
        tx: &mut Transaction<'static, Any>,
        operation: Operation,
        key: &str,
        lock: &str,
    ) -> Result<Option<KeyRow>, PaymentError> {
        let row = sqlx::query(&format!(
            "SELECT fingerprint, payment_id, recovery_point, lock_token, locked_until_us, amount_minor, request, intent_id \
             FROM idempotency_keys WHERE operation = $1 AND idempotency_key = $2 {lock}"
        ))
        .bind(operation.as_str())
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(KeyRow {
            fingerprint: row.try_get("fingerprint")?,
            payment_id: row.try_get("payment_id")?,
            recovery_point: row.try_get("recovery_point")?,
            lock_token: row.try_get("lock_token")?,
            locked_until_us: row.try_get("locked_until_us")?,
            amount_minor: row.try_get("amount_minor")?,
            request: row.try_get("request")?,
            intent_id: row.try_get("intent_id")?,
        }))
    }

    /// The claim an existing key allows: its result, or a takeover once
    /// its owner's lease is over.
    async fn claim_existing(
        &self,
        tx: &mut Transaction<'static, Any>,
        operation: Operation,
        key: &str,
        row: KeyRow,
    ) -> Result<Claim, PaymentError> {
        match row.recovery_point.as_str() {
            "voided" => return Ok(Claim::Voided),
            "finished" => {
                return Ok(Claim::Finished {
                    payment_id: row.payment_id,
                });
            }
            _ => {}
        }
        if row.locked_until_us > self.clock.now_us() {
            return Err(PaymentError::KeyInProgress);
        }
        let token = fresh_token();
        // The lease is checked again by the statement itself: the row read
        // above may have changed since (its owner recorded an intent and
        // renewed its lease), and a plain read does not wait for that.
        static TAKE_OVER: LazyLock<[String; 2]> = LazyLock::new(|| {
            stamped(
                "UPDATE idempotency_keys SET lock_token = $3, locked_until_us = {now} + $4 \
                 WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $5 \
                   AND locked_until_us <= {now}",
            )
        });
        let taken = sqlx::query(self.for_backend(&TAKE_OVER))
            .bind(operation.as_str())
            .bind(key)
            .bind(&token)
            .bind(self.lease_us())
            .bind(&row.lock_token)
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
            payment_id: row.payment_id,
            amount_minor: row.amount_minor,
            charge: parse_request(&row.request)?,
            lock_token: token,
            intent_id: Some(row.intent_id).filter(|id| !id.is_empty()),
            resumed: true,
        }))
    }

    /// Keys created before `before_us` still `started`: outcomes not
    /// known yet, as (operation, key, payment, intent).
    pub async fn unsettled(
        &self,
        before_us: i64,
    ) -> Result<Vec<(Operation, String, String, String)>, PaymentError> {
        let rows = sqlx::query(
            "SELECT operation, idempotency_key, payment_id, intent_id FROM idempotency_keys \
             WHERE recovery_point = 'started' AND created_at_us < $1 ORDER BY created_at_us",
        )
        .bind(before_us)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let operation: String = row.try_get("operation")?;
                Ok((
                    Operation::from_stored(&operation).ok_or_else(|| {
                        PaymentError::CorruptRow(format!("unknown operation {operation:?}"))
                    })?,
                    row.try_get("idempotency_key")?,
                    row.try_get("payment_id")?,
                    row.try_get("intent_id")?,
                ))
            })
            .collect()
    }

    /// Takes over an abandoned key (for the sweeper); `None` if it is not
    /// abandoned (any more).
    pub async fn take_over(
        &self,
        operation: Operation,
        key: &str,
    ) -> Result<Option<Claimed>, PaymentError> {
        let mut tx = self.pool.begin().await?;
        // A row another session holds (its owner's open transaction, a
        // frozen replica's) is passed over, not waited for: the sweep goes
        // on with the other keys and comes back to it next time.
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let Some(row) = Self::key_row_where(&mut tx, operation, key, lock).await? else {
            return Ok(None);
        };
        let claim = match self.claim_existing(&mut tx, operation, key, row).await {
            Ok(Claim::Owned(claim)) => Some(claim),
            Ok(_) | Err(PaymentError::KeyInProgress) => None,
            Err(e) => return Err(e),
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Keys abandoned in `started` (lease over), oldest first.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "SELECT idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "SELECT", db.collection.name = "idempotency_keys"))]
    pub async fn abandoned(&self, limit: u32) -> Result<Vec<(Operation, String)>, PaymentError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT operation, idempotency_key FROM idempotency_keys \
             WHERE recovery_point = 'started' AND locked_until_us < $1 ORDER BY locked_until_us LIMIT $2",
        )
        .bind(self.clock.now_us())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(op, key)| Operation::from_stored(&op).map(|op| (op, key)))
            .collect())
    }

    /// Marks the key finished if this claim still owns it.
    pub(super) async fn finish_key(
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

    /// Nothing moved (the provider refused the call, or has no record of
    /// it): forget the claim, and a refund's reservation, so a retry starts
    /// afresh.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "DELETE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "DELETE", db.collection.name = "idempotency_keys"))]
    pub async fn release(&self, claim: &Claimed) -> Result<(), PaymentError> {
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
        if released.rows_affected() == 1 && claim.operation == Operation::Refund {
            sqlx::query(
                "UPDATE payments SET refund_pending_minor = refund_pending_minor - $2, updated_at_us = $3 \
                 WHERE payment_id = $1",
            )
            .bind(&claim.payment_id)
            .bind(claim.amount_minor)
            .bind(self.clock.now_us())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The provider has no charge under this key: close it for good.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
    pub async fn void(&self, claim: &Claimed) -> Result<(), PaymentError> {
        let voided = sqlx::query(
            "UPDATE idempotency_keys SET recovery_point = 'voided' \
             WHERE operation = 'charge' AND idempotency_key = $1 AND recovery_point = 'started' AND lock_token = $2",
        )
        .bind(&claim.key)
        .bind(&claim.lock_token)
        .execute(&self.pool)
        .await?;
        if voided.rows_affected() == 1 {
            Ok(())
        } else {
            Err(PaymentError::KeyInProgress)
        }
    }

    /// Records the intent this claim created at the provider, before it
    /// is confirmed, and starts the claim's lease afresh for the confirm;
    /// `KeyInProgress` if the claim was lost meanwhile (then this request
    /// must not confirm it).
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
    pub async fn record_intent(
        &self,
        claim: &mut Claimed,
        intent_id: &str,
    ) -> Result<(), PaymentError> {
        static RECORD: LazyLock<[String; 2]> = LazyLock::new(|| {
            stamped(
                "UPDATE idempotency_keys SET intent_id = $3, locked_until_us = {now} + $4 \
                 WHERE operation = 'charge' AND idempotency_key = $1 AND recovery_point = 'started' AND lock_token = $2",
            )
        });
        let query = sqlx::query(self.for_backend(&RECORD))
            .bind(&claim.key)
            .bind(&claim.lock_token)
            .bind(intent_id)
            .bind(self.lease_us());
        if self.kept.execute(query).await?.rows_affected() == 1 {
            claim.intent_id = Some(intent_id.to_owned());
            Ok(())
        } else {
            Err(PaymentError::KeyInProgress)
        }
    }

    /// Starts this claim's lease afresh, from now on the database's clock:
    /// the owner of a taken-over key calls this between its look-up at the
    /// provider and the call it makes next, so that each provider call
    /// starts with a whole lease. `KeyInProgress` if the claim was lost
    /// meanwhile (the lease ran out and another request took the key over,
    /// or finished it): then this request must not call the provider.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
    pub async fn extend(&self, claim: &Claimed) -> Result<(), PaymentError> {
        static EXTEND: LazyLock<[String; 2]> = LazyLock::new(|| {
            stamped(
                "UPDATE idempotency_keys SET locked_until_us = {now} + $4 \
                 WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $3",
            )
        });
        let extended = sqlx::query(self.for_backend(&EXTEND))
            .bind(claim.operation.as_str())
            .bind(&claim.key)
            .bind(&claim.lock_token)
            .bind(self.lease_us())
            .execute(&self.pool)
            .await?;
        if extended.rows_affected() == 1 {
            Ok(())
        } else {
            Err(PaymentError::KeyInProgress)
        }
    }

    /// Ends this claim's lease now, keeping the key `started`: the outcome
    /// is still unknown and the next attempt may take over at once.
    #[tracing::instrument(name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system = self.system, db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
    pub async fn unlock(&self, claim: &Claimed) -> Result<(), PaymentError> {
        sqlx::query(
            "UPDATE idempotency_keys SET locked_until_us = $4 \
             WHERE operation = $1 AND idempotency_key = $2 AND recovery_point = 'started' AND lock_token = $3",
        )
        .bind(claim.operation.as_str())
        .bind(&claim.key)
        .bind(&claim.lock_token)
        .bind(self.clock.now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn parse_request(request: &str) -> Result<Option<StoredCharge>, PaymentError> {
    if request.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(request)
        .map(Some)
        .map_err(|e| PaymentError::CorruptRow(format!("stored charge request: {e}")))
}
