//! Retries with gRFC A6 semantics, as a policy around a typed tonic call
//! (the request is cloned per attempt, which an HTTP-level layer could only
//! do by buffering bodies).
//!
//! - at most `max_attempts` (≤ 5) attempts, the first included;
//! - exponential backoff with full jitter between attempts;
//! - only `retryable_codes` are retried (default: UNAVAILABLE), and only
//!   calls the caller declares safe to repeat (reads, or writes carrying an
//!   idempotency key);
//! - a token bucket shared by all calls to one downstream throttles retries:
//!   each retryable failure takes a token, each success gives back
//!   `token_ratio`, and retries are allowed only while more than half the
//!   tokens are left — so when most calls fail, retries stop instead of
//!   multiplying the load;
//! - one deadline covers all attempts: no attempt starts whose backoff
//!   would end past it.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tonic::{Code, Status};

/// gRFC A6's hard limit on attempts.
pub const MAX_ATTEMPTS: u32 = 5;

/// How one downstream is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts including the first, clamped to 1..=5.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    pub retryable_codes: Vec<Code>,
    /// Token bucket size; 0 disables throttling.
    pub max_tokens: f64,
    pub token_ratio: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_codes: vec![Code::Unavailable],
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

/// Whether a call may be repeated safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// A read, or a write carrying an idempotency key: retried.
    Safe,
    /// A write that could happen twice: never retried.
    Unsafe,
}

/// Retries for one downstream; clones share the throttle.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    tokens: Arc<Mutex<f64>>,
}

impl RetryPolicy {
    pub fn new(mut config: RetryConfig) -> Self {
        config.max_attempts = config.max_attempts.clamp(1, MAX_ATTEMPTS);
        let tokens = Arc::new(Mutex::new(config.max_tokens));
        Self { config, tokens }
    }

    fn throttled(&self) -> bool {
        self.config.max_tokens > 0.0
            && self
                .tokens
                .lock()
                .map(|t| *t <= self.config.max_tokens / 2.0)
                .unwrap_or(false)
    }

    fn on_result(&self, retryable_failure: bool) {
        if let Ok(mut tokens) = self.tokens.lock() {
            *tokens = if retryable_failure {
                (*tokens - 1.0).max(0.0)
            } else {
                (*tokens + self.config.token_ratio).min(self.config.max_tokens)
            };
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .config
            .backoff_multiplier
            .powi(i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX));
        let ceiling = self
            .config
            .initial_backoff
            .mul_f64(exp)
            .min(self.config.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Runs `attempt` until it succeeds, fails in a way not to retry, runs
    /// out of attempts or throttle tokens, or would pass `deadline`. Each
    /// attempt gets the time left until the deadline, for its own timeout.
    pub async fn call<T, F, Fut>(
        &self,
        idempotency: Idempotency,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, Status>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "deadline exceeded before the call was made",
                ));
            }
            let status = match attempt(left).await {
                Ok(value) => {
                    self.on_result(false);
                    return Ok(value);
                }
                Err(status) => status,
            };
            let retryable = self.config.retryable_codes.contains(&status.code());
            self.on_result(retryable);
            if !retryable
                || idempotency == Idempotency::Unsafe
                || attempts >= self.config.max_attempts
                || self.throttled()
            {
                return Err(status);
            }
            let pause = self.backoff(attempts);
            if Instant::now() + pause >= deadline {
                return Err(status);
            }
            tracing::debug!(attempt = attempts, code = ?status.code(), ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }
}
