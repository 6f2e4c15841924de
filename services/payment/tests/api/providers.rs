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
