//! A payment provider that fails or stalls on cue, wrapping the simulated
//! one: injected into the payment service of a suite (a trait object of the
//! test's, not code that production builds carry).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mercato_api::Money;
use mercato_payment::provider::{
    Intent, NewIntent, PaymentProvider, ProviderError, ProviderRecord, Refund, SimulatedProvider,
};
use tokio::{sync::watch, time::Instant};

use crate::support::ProviderFactory;

/// What a held refund does once let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Hold,
    Complete,
    Fail,
}

/// The simulated provider, down until `down_until` (every call fails as
/// "unavailable": nothing happened), and holding refunds whose key starts
/// with `held_prefix` until the test lets them go.
#[derive(Debug)]
struct Faulty {
    inner: SimulatedProvider,
    down_until: Option<Instant>,
    held: Option<(&'static str, watch::Receiver<Release>)>,
}

impl Faulty {
    fn factory(
        down_until: Option<Instant>,
        held: Option<(&'static str, watch::Receiver<Release>)>,
    ) -> ProviderFactory {
        Box::new(move |database| {
            Arc::new(Faulty {
                inner: SimulatedProvider::new(database, Duration::from_millis(300)),
                down_until,
                held,
            })
        })
    }

    fn up(&self) -> Result<(), ProviderError> {
        match self.down_until {
            Some(until) if Instant::now() < until => {
                Err(ProviderError::Unavailable("provider outage".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A provider that is down for `length` from now.
pub fn outage_for(length: Duration) -> ProviderFactory {
    Faulty::factory(Some(Instant::now() + length), None)
}

/// A provider holding refunds whose key starts with `prefix`, and the handle
/// that lets them go.
pub fn holding_refunds(
    prefix: &'static str,
) -> (ProviderFactory, Arc<Mutex<watch::Sender<Release>>>) {
    let (tx, gate) = watch::channel(Release::Hold);
    (
        Faulty::factory(None, Some((prefix, gate))),
        Arc::new(Mutex::new(tx)),
    )
}

#[async_trait::async_trait]
impl PaymentProvider for Faulty {
    fn accepts(&self, payment_method: &str) -> bool {
        self.inner.accepts(payment_method)
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        self.up()?;
        self.inner.create_intent(new).await
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.up()?;
        self.inner.confirm(intent_id).await
    }

    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.up()?;
        self.inner.cancel(intent_id).await
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        self.up()?;
        self.inner.intent(intent_id).await
    }

    async fn refund(
        &self,
        key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError> {
        self.up()?;
        if let Some((prefix, gate)) = &self.held
            && key.starts_with(prefix)
        {
            let released = *gate
                .clone()
                .wait_for(|r| *r != Release::Hold)
                .await
                .map_err(|_| ProviderError::Unavailable("gate dropped".into()))?;
            if released == Release::Fail {
                return Err(ProviderError::Unavailable("refund refused".into()));
            }
        }
        self.inner.refund(key, intent_id, amount).await
    }

    async fn find_refund(
        &self,
        key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        self.up()?;
        self.inner.find_refund(key, intent_id).await
    }

    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        self.up()?;
        self.inner.records(since_us, until_us).await
    }
}
