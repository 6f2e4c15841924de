//! Payment providers that fail or stall on cue, wrapping the simulated one:
//! injected into the payment service of a suite (a trait object of the
//! test's, not code that production builds carry).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mercato_payment::provider::{ChargeOutcome, PaymentProvider, ProviderError, SimulatedProvider};
use mercato_platform::{database::Database, money::Money};
use tokio::{sync::watch, time::Instant};

use crate::support::ProviderFactory;

fn simulated(database: &Database) -> SimulatedProvider {
    SimulatedProvider::new(database.pool.clone(), Duration::from_millis(300))
}

/// Every call fails ("unavailable": nothing happened) until `until`.
#[derive(Debug)]
pub struct Outage {
    inner: SimulatedProvider,
    until: Instant,
}

impl Outage {
    /// A provider that is down for `length` from now.
    pub fn for_the_next(length: Duration) -> ProviderFactory {
        let until = Instant::now() + length;
        Box::new(move |database| {
            Arc::new(Outage {
                inner: simulated(database),
                until,
            })
        })
    }

    fn check(&self) -> Result<(), ProviderError> {
        if Instant::now() < self.until {
            Err(ProviderError::Unavailable("provider outage".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Outage {
    fn accepts(&self, payment_method: &str) -> bool {
        self.inner.accepts(payment_method)
    }

    async fn charge(
        &self,
        key: &str,
        amount: &Money,
        payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        self.check()?;
        self.inner.charge(key, amount, payment_method).await
    }

    async fn refund(&self, key: &str, amount: &Money) -> Result<String, ProviderError> {
        self.check()?;
        self.inner.refund(key, amount).await
    }

    async fn find_charge(&self, key: &str) -> Result<Option<ChargeOutcome>, ProviderError> {
        self.check()?;
        self.inner.find_charge(key).await
    }

    async fn find_refund(&self, key: &str) -> Result<Option<String>, ProviderError> {
        self.check()?;
        self.inner.find_refund(key).await
    }
}

/// What a held refund does once let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Hold,
    Complete,
    Fail,
}

/// Refunds whose key starts with `prefix` wait until the test lets them go.
#[derive(Debug)]
pub struct HeldRefunds {
    inner: SimulatedProvider,
    prefix: &'static str,
    gate: watch::Receiver<Release>,
}

impl HeldRefunds {
    /// The provider factory and the handle that lets refunds go.
    pub fn with_prefix(
        prefix: &'static str,
    ) -> (ProviderFactory, Arc<Mutex<watch::Sender<Release>>>) {
        let (tx, gate) = watch::channel(Release::Hold);
        let factory: ProviderFactory = Box::new(move |database| {
            Arc::new(HeldRefunds {
                inner: simulated(database),
                prefix,
                gate,
            })
        });
        (factory, Arc::new(Mutex::new(tx)))
    }
}

#[async_trait::async_trait]
impl PaymentProvider for HeldRefunds {
    fn accepts(&self, payment_method: &str) -> bool {
        self.inner.accepts(payment_method)
    }

    async fn charge(
        &self,
        key: &str,
        amount: &Money,
        payment_method: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        self.inner.charge(key, amount, payment_method).await
    }

    async fn refund(&self, key: &str, amount: &Money) -> Result<String, ProviderError> {
        if key.starts_with(self.prefix) {
            let mut gate = self.gate.clone();
            let released = *gate
                .wait_for(|r| *r != Release::Hold)
                .await
                .map_err(|_| ProviderError::Unavailable("gate dropped".into()))?;
            if released == Release::Fail {
                return Err(ProviderError::Unavailable("refund refused".into()));
            }
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
