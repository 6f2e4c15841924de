//! The circuit breaker as a tower service for tonic clients.
//!
//! A gate in front of one downstream: [`Policy`] decides per call whether it
//! may pass; a call that may not fails at once with UNAVAILABLE naming the
//! breaker (never reaching the downstream), and every call that passes
//! reports its outcome back. Only transient outcomes count as failures:
//! UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN and
//! transport errors; answers such as INVALID_ARGUMENT or NOT_FOUND prove the
//! downstream healthy — and so do transient codes carrying an ErrorInfo
//! reason the breaker was told is a healthy answer. The gRPC status is read from the response headers
//! (trailers-only answers, which is how errors usually come) or else from
//! the trailers at the end of the body.

mod future;
mod layer;

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub use self::{future::ResponseFuture, layer::CircuitBreakerLayer};
use crate::{
    codes::downstream_failed,
    policy::{BreakerConfig, CircuitState, Outcome, Permit, Policy},
};

/// State shared by every clone of one breaker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    policy: Mutex<Policy>,
    /// Reflects the state for dashboards: 0 closed, 1 open, 2 half-open.
    gauge: Gauge,
    last: Mutex<CircuitState>,
    /// ErrorInfo reasons that make a transient code a healthy answer.
    healthy_reasons: Vec<&'static str>,
}

impl Shared {
    pub(crate) fn new(
        name: String,
        config: BreakerConfig,
        gauge: Gauge,
        healthy_reasons: Vec<&'static str>,
    ) -> Self {
        Self {
            name,
            policy: Mutex::new(Policy::new(config)),
            gauge,
            last: Mutex::new(CircuitState::Closed),
            healthy_reasons,
        }
    }

    /// What the `grpc-status` (and details) in `headers` say about the
    /// downstream, if there is a status there.
    pub(crate) fn outcome_of(&self, headers: &http::HeaderMap) -> Option<Outcome> {
        let code = headers
            .get("grpc-status")?
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i32>().ok())?;
        if !downstream_failed(Code::from_i32(code)) || self.answered_healthy(headers) {
            Some(Outcome::Success)
        } else {
            Some(Outcome::Failure)
        }
    }

    fn answered_healthy(&self, headers: &http::HeaderMap) -> bool {
        !self.healthy_reasons.is_empty()
            && Status::from_header_map(headers)
                .and_then(|status| status.get_details_error_info())
                .is_some_and(|info| self.healthy_reasons.contains(&info.reason.as_str()))
    }

    fn acquire(&self) -> Option<Permit> {
        let now = Instant::now();
        let permit = self.policy.lock().ok().and_then(|mut p| p.try_acquire(now));
        self.observe(now);
        permit
    }

    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        let now = Instant::now();
        if let Ok(mut policy) = self.policy.lock() {
            policy.record(permit, outcome, now);
        }
        self.observe(now);
    }

    /// Updates the gauge and logs a line per transition.
    fn observe(&self, now: Instant) {
        let Some(state) = self.policy.lock().ok().map(|p| p.state(now)) else {
            return;
        };
        if let Ok(mut last) = self.last.lock()
            && *last != state
        {
            tracing::warn!(breaker = %self.name, from = ?*last, to = ?state, "circuit breaker state changed");
            *last = state;
            self.gauge.set(state.as_gauge());
        }
    }

    /// The current state (for tests and health reporting).
    pub(crate) fn state(&self) -> CircuitState {
        self.policy
            .lock()
            .map(|p| p.state(Instant::now()))
            .unwrap_or(CircuitState::Closed)
    }
}

/// A circuit breaker around the service `S` (usually a tonic `Channel`).
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreaker<S> {
    /// The breaker's current state.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for CircuitBreaker<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Error: Into<crate::BoxError>,
{
    type Response = http::Response<future::ObservedBody<ResBody>>;
    type Error = crate::BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready while the inner service is: an open breaker rejects in
        // `call`, like tower's load_shed, so callers fail fast instead of queueing.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.shared.acquire() {
            Some(permit) => {
                ResponseFuture::admitted(self.inner.call(request), permit, self.shared.clone())
            }
            None => ResponseFuture::rejected(self.shared.name.clone()),
        }
    }
}
