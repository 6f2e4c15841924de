//! Providers for tests: the simulated one counting confirms and holding
//! refunds until released, or holding a call on the wire; one with slow
//! look-ups.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mercato_api::Money;
use mercato_payment::provider::{
    Intent, IntentState, NewIntent, PaymentProvider, ProviderError, ProviderRecord, Refund,
    SimulatedProvider,
};
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

    fn intent_id_for(&self, idempotency_key: &str) -> Option<String> {
        self.inner.intent_id_for(idempotency_key)
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        self.inner.create_intent(new).await
    }

    async fn create_confirmed(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let _in_flight = InFlight::enter(&self.calls);
        self.inner.create_confirmed(new).await
    }

    async fn create_canceled(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        self.inner.create_canceled(new).await
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        let _in_flight = InFlight::enter(&self.calls);
        self.inner.confirm(intent_id).await
    }

    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.inner.cancel(intent_id).await
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        self.inner.intent(intent_id).await
    }

    async fn refund(
        &self,
        key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError> {
        if let Some(gate) = &self.refunds {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| ProviderError::Unavailable("closed".into()))?;
        }
        self.inner.refund(key, intent_id, amount).await
    }

    async fn find_refund(
        &self,
        key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        self.inner.find_refund(key, intent_id).await
    }

    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        self.inner.records(since_us, until_us).await
    }
}

/// A provider of its own (no simulated one inside) for lease tests: each
/// look-up reads the intent at once and answers after the next of
/// `look_up_delays` (a reply slow to come back), and each confirm notes how
/// much of its key's lease was left when it reached the provider.
#[derive(Debug)]
pub struct SlowLookUps {
    pool: sqlx::AnyPool,
    look_up_delays: std::sync::Mutex<std::collections::VecDeque<Duration>>,
    intents: std::sync::Mutex<std::collections::HashMap<String, Intent>>,
    /// Per confirm: the key's `locked_until_us` minus the database's now.
    pub lease_left_us: std::sync::Mutex<Vec<i64>>,
}

impl SlowLookUps {
    pub fn new(database: &mercato_database::Database, look_up_delays: &[Duration]) -> Self {
        Self {
            pool: database.pool.clone(),
            look_up_delays: std::sync::Mutex::new(look_up_delays.iter().copied().collect()),
            intents: std::sync::Mutex::default(),
            lease_left_us: std::sync::Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl PaymentProvider for SlowLookUps {
    fn accepts(&self, _payment_method: &str) -> bool {
        true
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let intent = Intent {
            id: format!("pi_{}", new.idempotency_key),
            amount: new.amount.clone(),
            state: IntentState::Open,
        };
        let mut intents = self.intents.lock().unwrap();
        Ok(intents.entry(intent.id.clone()).or_insert(intent).clone())
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        let key = intent_id.trim_start_matches("pi_");
        let left: i64 = sqlx::query_scalar(
            "SELECT locked_until_us - CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) \
             FROM idempotency_keys WHERE operation = 'charge' AND idempotency_key = $1",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        self.lease_left_us.lock().unwrap().push(left);
        let mut intents = self.intents.lock().unwrap();
        let intent = intents
            .get_mut(intent_id)
            .ok_or_else(|| ProviderError::Refused("no such intent".into()))?;
        if intent.state == IntentState::Open {
            intent.state = IntentState::Succeeded;
        }
        Ok(intent.clone())
    }

    async fn cancel(&self, _intent_id: &str) -> Result<Intent, ProviderError> {
        Err(ProviderError::Unavailable("no cancels here".into()))
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        let found = self.intents.lock().unwrap().get(intent_id).cloned();
        let delay = self.look_up_delays.lock().unwrap().pop_front();
        tokio::time::sleep(delay.unwrap_or_default()).await;
        Ok(found)
    }

    async fn refund(
        &self,
        _key: &str,
        _intent_id: &str,
        _amount: &Money,
    ) -> Result<Refund, ProviderError> {
        Err(ProviderError::Unavailable("no refunds here".into()))
    }

    async fn find_refund(
        &self,
        _key: &str,
        _intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        Ok(None)
    }

    async fn records(
        &self,
        _since_us: i64,
        _until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        Ok(Vec::new())
    }
}

/// Which money-moving calls a [`Late`] provider holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Confirms of intents created and recorded first (as with Stripe).
    Charges,
    /// Charges created and confirmed in one call, their intents named by
    /// our key (the simulated provider as shipped).
    NamedCharges,
    Refunds,
}

/// The simulated provider behind a network that holds the first of one
/// kind of money-moving call (charges or refunds): it is already on the wire — it runs to
/// the end even when its caller stopped waiting — and reaches the provider
/// only once the gate opens. A partition that heals, or a provider that
/// commits after our timeout.
#[derive(Debug)]
pub struct Late {
    inner: SimulatedProvider,
    held: Held,
    holding: std::sync::atomic::AtomicBool,
    gate: tokio::sync::watch::Receiver<bool>,
    landed: Arc<tokio::sync::Notify>,
}

/// Opens the gate of a [`Late`] provider and waits for what it held to land.
pub struct LateGate {
    open: tokio::sync::watch::Sender<bool>,
    landed: Arc<tokio::sync::Notify>,
}

impl LateGate {
    /// Lets the held call through and waits until the provider acted on it.
    pub async fn open_and_land(self) {
        let landed = self.landed.notified();
        self.open.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), landed)
            .await
            .expect("the held call landed");
    }
}

impl Late {
    pub fn provider(
        held: Held,
    ) -> (
        ProviderFactory,
        LateGate,
        Arc<std::sync::OnceLock<Arc<Late>>>,
    ) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let landed = Arc::new(tokio::sync::Notify::new());
        let handle = Arc::new(std::sync::OnceLock::new());
        let kept = handle.clone();
        let notify = landed.clone();
        let factory: ProviderFactory = Box::new(move |database| {
            let late = Arc::new(Late {
                inner: SimulatedProvider::new(database, Duration::ZERO),
                held,
                holding: std::sync::atomic::AtomicBool::new(true),
                gate,
                landed: notify,
            });
            kept.set(late.clone()).unwrap();
            late
        });
        (factory, LateGate { open, landed }, handle)
    }

    /// Runs `call` once the gate opens, on a task of its own (what is on
    /// the wire arrives whether or not anyone still waits for it).
    async fn held<T: Send + 'static>(
        &self,
        kind: Held,
        call: impl std::future::Future<Output = Result<T, ProviderError>> + Send + 'static,
    ) -> Result<T, ProviderError> {
        if kind != self.held || !self.holding.swap(false, Ordering::SeqCst) {
            return call.await;
        }
        let mut gate = self.gate.clone();
        let landed = self.landed.clone();
        tokio::spawn(async move {
            let _ = gate.wait_for(|open| *open).await;
            let result = call.await;
            landed.notify_waiters();
            result
        })
        .await
        .map_err(|e| ProviderError::Unknown(e.to_string()))?
    }

    /// Whether the provider refunded under refund key `key` on the
    /// intent of charge key `charge_key`.
    pub async fn refunded(&self, key: &str, charge_key: &str) -> bool {
        let intent = format!("sim_pi_{charge_key}");
        matches!(self.inner.find_refund(key, &intent).await, Ok(Some(_)))
    }

    /// Whether the provider took money under charge key `key`.
    pub async fn charged(&self, key: &str) -> bool {
        let intent = self.inner.intent(&format!("sim_pi_{key}")).await;
        matches!(
            intent,
            Ok(Some(Intent {
                state: IntentState::Succeeded,
                ..
            }))
        )
    }
}

#[async_trait::async_trait]
impl PaymentProvider for Late {
    fn accepts(&self, payment_method: &str) -> bool {
        self.inner.accepts(payment_method)
    }

    fn intent_id_for(&self, idempotency_key: &str) -> Option<String> {
        match self.held {
            Held::NamedCharges => self.inner.intent_id_for(idempotency_key),
            Held::Charges | Held::Refunds => None,
        }
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        self.inner.create_intent(new).await
    }

    async fn create_confirmed(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        // The partition that holds the first call on the wire refuses the
        // connections of the next ones until it heals: nothing sent.
        if self.held == Held::NamedCharges
            && !self.holding.load(Ordering::SeqCst)
            && !*self.gate.borrow()
        {
            return Err(ProviderError::Unavailable(
                "partitioned: no connection".into(),
            ));
        }
        let inner = self.inner.clone();
        let (key, order, amount, method) = (
            new.idempotency_key.to_owned(),
            new.order_id.to_owned(),
            new.amount.clone(),
            new.payment_method.to_owned(),
        );
        self.held(Held::NamedCharges, async move {
            let new = NewIntent {
                idempotency_key: &key,
                order_id: &order,
                amount: &amount,
                payment_method: &method,
            };
            inner.create_confirmed(new).await
        })
        .await
    }

    async fn create_canceled(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        self.inner.create_canceled(new).await
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        let (inner, intent_id) = (self.inner.clone(), intent_id.to_owned());
        self.held(
            Held::Charges,
            async move { inner.confirm(&intent_id).await },
        )
        .await
    }

    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.inner.cancel(intent_id).await
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        self.inner.intent(intent_id).await
    }

    async fn refund(
        &self,
        key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError> {
        let (inner, key, intent_id, amount) = (
            self.inner.clone(),
            key.to_owned(),
            intent_id.to_owned(),
            amount.clone(),
        );
        self.held(Held::Refunds, async move {
            inner.refund(&key, &intent_id, &amount).await
        })
        .await
    }

    async fn find_refund(
        &self,
        key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        self.inner.find_refund(key, intent_id).await
    }

    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        self.inner.records(since_us, until_us).await
    }
}
