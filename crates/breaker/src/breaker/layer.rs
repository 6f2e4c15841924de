use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tower::Layer;

use super::{CircuitBreaker, Shared};
use crate::policy::{BreakerConfig, CircuitState};

/// Wraps services in one shared breaker: every clone of the layer and of the
/// services it makes counts into the same state.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// A breaker named `name` (it appears in errors, logs and the gauge).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Self::with_gauge(name, config, Gauge::default())
    }

    /// Like `new`, reporting the state to `gauge` (0 closed, 1 open, 2 half-open).
    pub fn with_gauge(name: impl Into<String>, config: BreakerConfig, gauge: Gauge) -> Self {
        Self::with_healthy_reasons(name, config, gauge, &[])
    }

    /// Like `with_gauge`, and an answer with a transient code whose
    /// `google.rpc.ErrorInfo` reason is one of `healthy_reasons` proves the
    /// downstream healthy: it answered, promptly and definitively (say,
    /// "my own provider refused; nothing happened"), so tripping would only
    /// fail other callers' calls that would succeed.
    pub fn with_healthy_reasons(
        name: impl Into<String>,
        config: BreakerConfig,
        gauge: Gauge,
        healthy_reasons: &[&'static str],
    ) -> Self {
        Self {
            shared: Arc::new(Shared::new(
                name.into(),
                config,
                gauge,
                healthy_reasons.to_vec(),
            )),
        }
    }

    /// The breaker's current state.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
        }
    }
}
