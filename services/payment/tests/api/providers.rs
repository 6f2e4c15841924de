//! Providers for tests, wrapping the simulated one: counting calls, and
//! holding refunds until released.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mercato_api::Money;
use mercato_payment::provider::{ChargeOutcome, PaymentProvider, ProviderError, SimulatedProvider};
use tokio::sync::Semaphore;

use crate::support::ProviderFactory;

/// How often, and how concurrently, the provider was asked to charge.
#[derive(Debug, Default)]
pub struct Calls {
    pub charges: AtomicUsize,
    in_flight: AtomicUsize,
    pub most_at_once: AtomicUsize,
}

/// The simulated provider (with `pm_slow` taking `slow`), counting charges;
/// refunds wait for a permit of `refunds` when one is given.
#[derive(Debug)]
pub struct Counting {
    inner: SimulatedProvider,
    calls: Arc<Calls>,
    refunds: Option<Arc<Semaphore>>,
}

impl Counting {
    pub fn provider(
        slow: Duration,
        refunds: Option<Arc<Semaphore>>,
    ) -> (ProviderFactory, Arc<Calls>) {
        let calls = Arc::new(Calls::default());
        let counted = calls.clone();
        let factory: ProviderFactory = Box::new(move |database| {
            Arc::new(Counting {
                inner: SimulatedProvider::new(database, slow),
                calls: counted,
                refunds,
            })
        });
        (factory, calls)
    }
}

/// Counts a call for as long as it runs, even when its future is dropped.
struct InFlight<'a>(&'a Calls);

impl<'a> InFlight<'a> {
    fn enter(calls: &'a Calls) -> Self {
        calls.charges.fetch_add(1, Ordering::SeqCst);
        let now = calls.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        calls.most_at_once.fetch_max(now, Ordering::SeqCst);
        Self(calls)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Counting {
    fn accepts(&self, payment_method: &str) -> bool {
        self.inner.accepts(payment_method)
    }

    async fn charge(
        &self,
        key: &str,
        amount: &Money,
        payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        let _in_flight = InFlight::enter(&self.calls);
        self.inner.charge(key, amount, payment_method).await
    }

    async fn refund(&self, key: &str, amount: &Money) -> Result<String, ProviderError> {
        if let Some(gate) = &self.refunds {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| ProviderError::Unavailable("closed".into()))?;
        }
        self.inner.refund(key, amount).await
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, ProviderError> {
        self.inner.find_charge(key).await
    }

    async fn find_refund(&self, key: &str) -> Result<Option<String>, ProviderError> {
        self.inner.find_refund(key).await
    }
}

/// A provider of its own (no simulated one inside) for lease tests: each
/// look-up reads the records at once and answers after the next of
/// `look_up_delays` (a reply slow to come back), and each charge notes how
/// much of its key's lease was left when it reached the provider.
#[derive(Debug)]
pub struct SlowLookUps {
    pool: sqlx::AnyPool,
    look_up_delays: std::sync::Mutex<std::collections::VecDeque<Duration>>,
    charged: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per charge call: the key's `locked_until_us` minus the database's now.
    pub lease_left_us: std::sync::Mutex<Vec<i64>>,
}

impl SlowLookUps {
    pub fn new(database: &mercato_database::Database, look_up_delays: &[Duration]) -> Self {
        Self {
            pool: database.pool.clone(),
            look_up_delays: std::sync::Mutex::new(look_up_delays.iter().copied().collect()),
            charged: std::sync::Mutex::default(),
            lease_left_us: std::sync::Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for SlowLookUps {
    fn accepts(&self, _payment_method: &str) -> bool {
        true
    }

    async fn charge(
        &self,
        key: &str,
        _amount: &Money,
        _payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        let left: i64 = sqlx::query_scalar(
            "SELECT locked_until_us - CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) \
             FROM idempotency_keys WHERE operation = 'charge' AND idempotency_key = $1",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        self.lease_left_us.lock().unwrap().push(left);
        self.charged.lock().unwrap().insert(key.to_owned());
        Ok(ChargeOutcome::Approved {
            reference: format!("ch_{key}"),
        })
    }

    async fn refund(&self, _key: &str, _amount: &Money) -> Result<String, ProviderError> {
        Err(ProviderError::Unavailable("no refunds here".into()))
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, ProviderError> {
        let found = self
            .charged
            .lock()
            .unwrap()
            .contains(key)
            .then(|| ChargeOutcome::Approved {
                reference: format!("ch_{key}"),
            });
        let delay = self.look_up_delays.lock().unwrap().pop_front();
        tokio::time::sleep(delay.unwrap_or_default()).await;
        Ok(found)
    }

    async fn find_refund(&self, _key: &str) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }
}
