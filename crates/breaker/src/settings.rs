//! Breaker and retry settings as operators write them (milliseconds, code
//! names), flattened into a service's `Settings` per downstream, e.g.
//! `BREAKER_PAYMENT__OPEN_MS=30000` or in YAML `breaker_payment: {open_ms: 30000}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::{policy::BreakerConfig, retry::RetryConfig};

/// One downstream's circuit breaker; see [`BreakerConfig`] for the meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerSettings {
    pub failure_rate_threshold: f64,
    pub slow_call_rate_threshold: f64,
    pub slow_call_ms: u64,
    pub window_size: u32,
    /// 0: count-based window of `window_size` calls; otherwise time-based.
    pub window_ms: u64,
    pub minimum_calls: u32,
    pub open_ms: u64,
    pub half_open_permits: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_ms: 2000,
            window_size: 20,
            window_ms: 0,
            minimum_calls: 10,
            open_ms: 10_000,
            half_open_permits: 3,
        }
    }
}

impl BreakerSettings {
    /// For downstreams where failures cost money: trips sooner and probes
    /// more carefully. It stays open no longer than the default: the saga's
    /// compensations need that downstream too, and a breaker still open
    /// long after a restart cancels orders that could have been paid.
    pub fn strict() -> Self {
        Self {
            failure_rate_threshold: 0.3,
            minimum_calls: 5,
            half_open_permits: 2,
            ..Self::default()
        }
    }

    /// The state machine configuration, or what is out of range.
    pub fn config(&self) -> Result<BreakerConfig, String> {
        if !(0.0..=1.0).contains(&self.failure_rate_threshold)
            || !(0.0..=1.0).contains(&self.slow_call_rate_threshold)
        {
            return Err("breaker thresholds must be between 0 and 1".into());
        }
        if self.window_size == 0 || self.half_open_permits == 0 {
            return Err("breaker window_size and half_open_permits must be at least 1".into());
        }
        Ok(BreakerConfig {
            failure_rate_threshold: self.failure_rate_threshold,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            slow_call_duration: Duration::from_millis(self.slow_call_ms),
            window_size: self.window_size,
            window_duration: (self.window_ms > 0).then(|| Duration::from_millis(self.window_ms)),
            minimum_calls: self.minimum_calls,
            open_duration: Duration::from_millis(self.open_ms),
            half_open_permits: self.half_open_permits,
        })
    }
}

/// Retries of one client; see [`RetryConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrySettings {
    /// 1 to 5, the first attempt included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub backoff_multiplier: f64,
    /// gRPC code names, e.g. `["UNAVAILABLE"]`.
    pub retryable_codes: Vec<String>,
    /// Token bucket of retry throttling; 0 disables it.
    pub max_tokens: f64,
    pub token_ratio: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 1000,
            backoff_multiplier: 2.0,
            retryable_codes: vec!["UNAVAILABLE".into()],
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

/// A gRPC code from its canonical name.
fn code_named(name: &str) -> Option<Code> {
    (0..=16).map(Code::from_i32).find(|code| {
        format!("{code:?}").to_uppercase().replace('_', "") == name.to_uppercase().replace('_', "")
    })
}

impl RetrySettings {
    /// The retry configuration, or what is out of range.
    pub fn config(&self) -> Result<RetryConfig, String> {
        if !(1..=crate::retry::MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "retry max_attempts must be 1 to {}",
                crate::retry::MAX_ATTEMPTS
            ));
        }
        let retryable_codes = self
            .retryable_codes
            .iter()
            .map(|name| {
                code_named(name)
                    .ok_or_else(|| format!("unknown gRPC code {name:?} in retryable_codes"))
            })
            .collect::<Result<_, _>>()?;
        Ok(RetryConfig {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            backoff_multiplier: self.backoff_multiplier.max(1.0),
            retryable_codes,
            max_tokens: self.max_tokens.max(0.0),
            token_ratio: self.token_ratio.max(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_and_validation() {
        assert_eq!(code_named("UNAVAILABLE"), Some(Code::Unavailable));
        assert_eq!(
            code_named("DEADLINE_EXCEEDED"),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(
            code_named("resource_exhausted"),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(code_named("NOPE"), None);
        let bad = RetrySettings {
            retryable_codes: vec!["NOPE".into()],
            ..RetrySettings::default()
        };
        assert!(bad.config().expect_err("unknown code").contains("NOPE"));
        assert!(
            RetrySettings {
                max_attempts: 6,
                ..RetrySettings::default()
            }
            .config()
            .is_err()
        );
        assert!(
            BreakerSettings {
                failure_rate_threshold: 2.0,
                ..BreakerSettings::default()
            }
            .config()
            .is_err()
        );
        assert_eq!(
            BreakerSettings::default()
                .config()
                .expect("defaults are valid"),
            BreakerConfig::default()
        );
    }
}
