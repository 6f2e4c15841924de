//! The built-in simulated provider, with a provider's life cycle.

use std::time::Duration;

use mercato_activity::now_us;
use mercato_api::Money;
use mercato_database::{AnyQuery, Database, KeptConnections};
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{
    Intent, IntentState, NewIntent, PaymentProvider, ProviderError, ProviderRecord, Refund,
};

/// The test payment methods of DESIGN §3, so every failure mode is reachable
/// from any client: `pm_approve`, `pm_decline`, `pm_error`, `pm_slow`.
///
/// It keeps its records where a real provider keeps its own, out of our
/// hands: in the tables `simulated_provider_intents` and
/// `simulated_provider_refunds` (created by the payment service's
/// migrations, never read by its ledger), with amounts, so that they can be
/// reconciled with the ledger. Intents move as a real provider's do: open
/// when created, succeeded or declined when confirmed (once: a later
/// confirm answers the state it finds), cancelled only while no money was
/// taken; refunds never exceed what an intent took. It names each intent
/// by our key (`sim_pi_<key>`), so a charge creates and confirms it in one
/// statement, and cancelling an intent not created yet creates it
/// cancelled (the fence a late creation runs into). `pm_error` refuses to
/// create an intent (an outage: nothing sent); `pm_slow` confirms at once
/// but answers late — so a caller that times out does not know whether
/// money moved, exactly as with a real provider.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    /// How long `pm_slow` takes to answer.
    slow_delay: Duration,
    /// Single statements (creating and confirming intents: the hot path).
    records: KeptConnections,
    /// Refunds (a transaction).
    pool: AnyPool,
}

/// The methods [`SimulatedProvider`] accepts.
pub const TEST_METHODS: [&str; 4] = ["pm_approve", "pm_decline", "pm_error", "pm_slow"];

const INTENT_COLUMNS: &str = "intent_id, currency, amount_minor, status, decline_reason";

impl SimulatedProvider {
    /// A simulated provider recording into `records` (the payment database).
    pub fn new(records: &Database, slow_delay: Duration) -> Self {
        Self {
            slow_delay,
            records: records.kept.clone(),
            pool: records.pool.clone(),
        }
    }

    async fn one_intent(
        &self,
        query: AnyQuery<'_>,
    ) -> Result<Option<(Intent, String)>, ProviderError> {
        let row = self
            .records
            .fetch_optional(query)
            .await
            .map_err(unknown_unless_unsent)?;
        row.map(|r| intent_of(&r))
            .transpose()
            .map_err(|e| ProviderError::Unknown(e.to_string()))
    }

    async fn by_id(&self, intent_id: &str) -> Result<Option<(Intent, String)>, ProviderError> {
        let sql = format!(
            "SELECT {INTENT_COLUMNS}, payment_method FROM simulated_provider_intents WHERE intent_id = $1"
        );
        self.one_intent(sqlx::query(&sql).bind(intent_id)).await
    }

    /// `UPDATE … RETURNING` the intent, or the intent as it is when the
    /// update found it in another state.
    async fn moved(
        &self,
        intent_id: &str,
        update: &str,
    ) -> Result<(Intent, String), ProviderError> {
        let sql = format!("{update} RETURNING {INTENT_COLUMNS}, payment_method");
        match self.one_intent(sqlx::query(&sql).bind(intent_id)).await? {
            Some(moved) => Ok(moved),
            None => self
                .by_id(intent_id)
                .await?
                .ok_or_else(|| ProviderError::Refused(format!("no such intent: {intent_id}"))),
        }
    }
}

/// The state [`SimulatedProvider::created`] creates an intent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    Open,
    /// Confirmed by the creation itself: succeeded, or declined (`pm_decline`).
    Confirmed,
    /// The fence of a key voided before its intent was created.
    Canceled,
}

impl SimulatedProvider {
    /// Creates the key's intent in `state`, in one statement when the key
    /// is new (the usual case); a repeated key answers the intent it
    /// created first. Also answers whether this call created it.
    async fn created(
        &self,
        new: NewIntent<'_>,
        state: Created,
    ) -> Result<(Intent, bool), ProviderError> {
        if new.payment_method == "pm_error" && state != Created::Canceled {
            return Err(ProviderError::Unavailable(
                "simulated provider outage (pm_error)".into(),
            ));
        }
        let (status, reason) = match state {
            Created::Open => ("open", ""),
            Created::Confirmed if new.payment_method == "pm_decline" => {
                ("declined", "card declined")
            }
            Created::Confirmed => ("succeeded", ""),
            Created::Canceled => ("canceled", ""),
        };
        let sql = format!(
            "INSERT INTO simulated_provider_intents \
               (intent_id, idempotency_key, order_id, currency, amount_minor, payment_method, status, \
                decline_reason, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING \
             RETURNING {INTENT_COLUMNS}, payment_method"
        );
        let query = sqlx::query(&sql)
            .bind(format!("sim_pi_{}", new.idempotency_key))
            .bind(new.idempotency_key)
            .bind(new.order_id)
            .bind(&new.amount.currency)
            .bind(new.amount.minor)
            .bind(new.payment_method)
            .bind(status)
            .bind(reason)
            .bind(now_us());
        if let Some((intent, _)) = self.one_intent(query).await? {
            return Ok((intent, true));
        }
        let sql = format!(
            "SELECT {INTENT_COLUMNS}, payment_method FROM simulated_provider_intents WHERE idempotency_key = $1"
        );
        self.one_intent(sqlx::query(&sql).bind(new.idempotency_key))
            .await?
            .map(|(intent, _)| (intent, false))
            .ok_or_else(|| ProviderError::Unknown("intent vanished".into()))
    }
}

/// A statement that never got a connection was never sent; any other
/// failure may have come after the database acted on it.
fn unknown_unless_unsent(e: sqlx::Error) -> ProviderError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ProviderError::Unavailable(e.to_string())
        }
        e => ProviderError::Unknown(e.to_string()),
    }
}

/// An intent row, and its payment method.
fn intent_of(row: &AnyRow) -> Result<(Intent, String), sqlx::Error> {
    let status: String = row.try_get("status")?;
    let state = match status.as_str() {
        "open" => IntentState::Open,
        "succeeded" => IntentState::Succeeded,
        "declined" => IntentState::Declined {
            reason: row.try_get("decline_reason")?,
        },
        "canceled" => IntentState::Canceled,
        other => {
            return Err(sqlx::Error::Decode(
                format!("unknown intent status {other:?}").into(),
            ));
        }
    };
    Ok((
        Intent {
            id: row.try_get("intent_id")?,
            amount: Money {
                currency: row.try_get("currency")?,
                minor: row.try_get("amount_minor")?,
            },
            state,
        },
        row.try_get("payment_method")?,
    ))
}

fn refund_of(row: &AnyRow) -> Result<Refund, ProviderError> {
    let read = || -> Result<Refund, sqlx::Error> {
        Ok(Refund {
            id: row.try_get("refund_id")?,
            amount_minor: row.try_get("amount_minor")?,
        })
    };
    read().map_err(|e| ProviderError::Unknown(e.to_string()))
}

#[async_trait::async_trait]
impl PaymentProvider for SimulatedProvider {
    fn accepts(&self, payment_method: &str) -> bool {
        TEST_METHODS.contains(&payment_method)
    }

    fn payment_methods(&self) -> String {
        format!("the test methods {}", TEST_METHODS.join(", "))
    }

    fn intent_id_for(&self, idempotency_key: &str) -> Option<String> {
        Some(format!("sim_pi_{idempotency_key}"))
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        Ok(self.created(new, Created::Open).await?.0)
    }

    async fn create_confirmed(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let (intent, made) = self.created(new, Created::Confirmed).await?;
        if !made && intent.state == IntentState::Open && intent.amount == *new.amount {
            // Created by an earlier call (without a confirm): confirm it now.
            return self.confirm(&intent.id).await;
        }
        if made && new.payment_method == "pm_slow" {
            tokio::time::sleep(self.slow_delay).await;
        }
        Ok(intent)
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        let (intent, method) = self
            .moved(
                intent_id,
                "UPDATE simulated_provider_intents SET \
                   status = CASE WHEN payment_method = 'pm_decline' THEN 'declined' ELSE 'succeeded' END, \
                   decline_reason = CASE WHEN payment_method = 'pm_decline' THEN 'card declined' ELSE '' END \
                 WHERE intent_id = $1 AND status = 'open'",
            )
            .await?;
        if method == "pm_slow" {
            tokio::time::sleep(self.slow_delay).await;
        }
        Ok(intent)
    }

    async fn create_canceled(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let (intent, made) = self.created(new, Created::Canceled).await?;
        if made {
            return Ok(intent);
        }
        self.cancel(&intent.id).await
    }

    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        let (intent, _) = self
            .moved(
                intent_id,
                "UPDATE simulated_provider_intents SET status = 'canceled' \
                 WHERE intent_id = $1 AND status IN ('open', 'declined')",
            )
            .await?;
        Ok(intent)
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        Ok(self.by_id(intent_id).await?.map(|(intent, _)| intent))
    }

    async fn refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError> {
        // Until the commit is sent nothing happened, whatever fails: the
        // transaction is rolled back. The write comes first, so that SQLite
        // takes its write lock at once (waiting its busy timeout) rather
        // than failing to upgrade a read lock.
        let nothing = |e: sqlx::Error| ProviderError::Unavailable(e.to_string());
        let mut tx = self.pool.begin().await.map_err(nothing)?;
        let refund = Refund {
            id: format!("sim_re_{idempotency_key}"),
            amount_minor: amount.minor,
        };
        let inserted = sqlx::query(
            "INSERT INTO simulated_provider_refunds (refund_id, idempotency_key, intent_id, amount_minor, created_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&refund.id)
        .bind(idempotency_key)
        .bind(intent_id)
        .bind(refund.amount_minor)
        .bind(now_us())
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            // A refund of an intent it never made (Postgres checks the key).
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                ProviderError::Refused(format!("no such intent: {intent_id}"))
            }
            e => nothing(e),
        })?;
        if inserted.rows_affected() == 0 {
            // A repeated key: the refund made the first time.
            let earlier = sqlx::query(
                "SELECT refund_id, amount_minor FROM simulated_provider_refunds WHERE idempotency_key = $1",
            )
            .bind(idempotency_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(nothing)?;
            return refund_of(&earlier);
        }
        let taken = sqlx::query(
            "UPDATE simulated_provider_intents SET refunded_minor = refunded_minor + $2 \
             WHERE intent_id = $1 AND status = 'succeeded' AND currency = $3 \
               AND refunded_minor + $2 <= amount_minor",
        )
        .bind(intent_id)
        .bind(amount.minor)
        .bind(&amount.currency)
        .execute(&mut *tx)
        .await
        .map_err(nothing)?;
        if taken.rows_affected() == 0 {
            return Err(ProviderError::Refused(format!(
                "intent {intent_id} has no {} {} left to refund",
                amount.minor, amount.currency
            )));
        }
        tx.commit()
            .await
            .map_err(|e| ProviderError::Unknown(e.to_string()))?;
        Ok(refund)
    }

    async fn find_refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        let query = sqlx::query(
            "SELECT refund_id, amount_minor FROM simulated_provider_refunds \
             WHERE idempotency_key = $1 AND intent_id = $2",
        )
        .bind(idempotency_key)
        .bind(intent_id);
        self.records
            .fetch_optional(query)
            .await
            .map_err(|e| ProviderError::Unknown(e.to_string()))?
            .map(|row| refund_of(&row))
            .transpose()
    }

    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        let sql = format!(
            "SELECT {INTENT_COLUMNS}, payment_method, idempotency_key, refunded_minor, created_at_us \
             FROM simulated_provider_intents WHERE created_at_us >= $1 AND created_at_us < $2 \
             ORDER BY created_at_us"
        );
        let rows = sqlx::query(&sql)
            .bind(since_us)
            .bind(until_us)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| ProviderError::Unknown(e.to_string()))?;
        rows.iter()
            .map(|row| {
                let (intent, _) = intent_of(row)?;
                Ok(ProviderRecord {
                    intent,
                    idempotency_key: row.try_get("idempotency_key")?,
                    refunded_minor: row.try_get("refunded_minor")?,
                    created_at_us: row.try_get("created_at_us")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| ProviderError::Unknown(e.to_string()))
    }
}
