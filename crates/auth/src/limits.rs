//! Rate limits by GCRA (the generic cell rate algorithm): a caller may
//! make `burst` calls at once and then one every `1 / rate` seconds; no
//! interval of any length `t` admits more than `burst + rate × t` calls.
//! (A fixed one-second window admits twice its rate across a window's
//! edge, within milliseconds.) Each key's state is one number, its
//! *theoretical arrival time* (TAT): when its budget is full again.
//!
//! [`Gcra`] keeps the TATs in process, in a bounded cache (keys idle for
//! longer than a full refill are forgotten — they would be full anyway — so
//! a caller spraying made-up keys cannot grow it without bound). The Redis
//! limiter in `mercato-platform` runs the same arithmetic in a script, so
//! every replica shares one budget.

use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Keys remembered at most (the oldest idle ones are dropped first).
const CAPACITY: u64 = 100_000;

/// A limit: `rate` calls per second, `burst` at once (at least 1). In
/// settings, a rate of 0 means no limit and a burst of 0 one second's calls.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Quota {
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl Quota {
    /// `rate` per second with a burst of one second's worth.
    pub fn per_second(rate: u32) -> Self {
        Self {
            rate_per_sec: f64::from(rate),
            burst: rate.max(1),
        }
    }

    /// The quota settings describe: `None` for no limit (rate 0), a burst
    /// of 0 read as one second's calls.
    pub fn from_settings(self) -> Option<Self> {
        (self.rate_per_sec > 0.0).then(|| Self {
            rate_per_sec: self.rate_per_sec,
            burst: match self.burst {
                0 => (self.rate_per_sec.ceil().min(f64::from(u32::MAX)) as u32).max(1),
                n => n,
            },
        })
    }

    /// Nanoseconds between two calls at the rate.
    pub fn interval_ns(self) -> u64 {
        (1e9 / self.rate_per_sec.max(1e-9)).min(u64::MAX as f64) as u64
    }

    /// How far ahead of now the TAT may be for a call to pass.
    pub fn tolerance_ns(self) -> u64 {
        self.interval_ns()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

/// One GCRA decision at `now` (any monotonic nanoseconds): the new TAT if
/// the call passes, or how long until it would.
pub fn decide(tat: u64, now: u64, quota: Quota) -> Result<u64, Duration> {
    let tat = tat.max(now);
    let ahead = tat - now;
    let tolerance = quota.tolerance_ns();
    if ahead > tolerance {
        return Err(Duration::from_nanos(ahead - tolerance));
    }
    Ok(tat.saturating_add(quota.interval_ns()))
}

/// GCRA limits kept in this process, per key.
#[derive(Debug, Clone)]
pub struct Gcra {
    epoch: Instant,
    tats: moka::sync::Cache<String, Arc<AtomicU64>>,
}

impl Default for Gcra {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Gcra {
    /// Forgets a key idle for `idle` (set it to at least the longest full
    /// refill, `burst / rate`, of the quotas used with it).
    pub fn new(idle: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            tats: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(idle)
                .build(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn cell(&self, key: &str) -> Arc<AtomicU64> {
        if let Some(cell) = self.tats.get(key) {
            return cell;
        }
        self.tats
            .get_with(key.to_owned(), || Arc::new(AtomicU64::new(0)))
    }

    /// Whether `key` has a call left in its budget, without taking it;
    /// `Err(wait)` when it is spent. (Keys never taken from have all.)
    pub fn check(&self, key: &str, quota: Quota) -> Result<(), Duration> {
        match self.tats.get(key) {
            Some(cell) => decide(cell.load(Ordering::Acquire), self.now_ns(), quota).map(drop),
            None => Ok(()),
        }
    }

    /// Takes one call from `key`'s budget; `Err(wait)` when it is spent.
    pub fn take(&self, key: &str, quota: Quota) -> Result<(), Duration> {
        let cell = self.cell(key);
        let now = self.now_ns();
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let next = decide(tat, now, quota)?;
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Limits the auth layer applies to callers (`auth.failed_auth_per_peer`,
/// `auth.peer_header`, `auth.role_limits`), each in process: per replica.
///
/// - A *peer* (the TCP client's IP address, or the value of a header a
///   trusted proxy sets, e.g. Envoy's `x-envoy-external-address`) may fail
///   authentication `burst` times and then `rate` times a second; beyond
///   that its credentials are not checked — no signature verified, no key
///   store asked — and the call is RESOURCE_EXHAUSTED with RetryInfo.
///   Tokens verified lately still pass (they cost nothing to check).
/// - A JWT caller (by `sub`) may call at its roles' quota: the most
///   generous of its roles', none if one of its roles has no limit. API
///   keys have their own per-key rate.
#[derive(Debug, Default)]
pub struct CallerLimits {
    failed_auth: Option<Quota>,
    peer_header: Option<http::HeaderName>,
    roles: std::collections::HashMap<String, Quota>,
    failures: Gcra,
    calls: Gcra,
}

/// Longest header value used as a peer key; longer ones are cut.
const PEER_KEY_MAX: usize = 64;

/// How long a key must be kept to be forgotten only once full again: the
/// longest refill of `quotas`, at least a minute.
fn longest_refill<'a>(quotas: impl Iterator<Item = &'a Quota>) -> Duration {
    quotas
        .map(|q| Duration::from_secs_f64(f64::from(q.burst) / q.rate_per_sec))
        .max()
        .unwrap_or_default()
        .max(Duration::from_secs(60))
}

impl CallerLimits {
    /// `failed_auth` per peer (None: unlimited), peers named by
    /// `peer_header` when a request has it, and per-caller quotas by role.
    pub fn new(
        failed_auth: Option<Quota>,
        peer_header: Option<http::HeaderName>,
        roles: impl IntoIterator<Item = (String, Quota)>,
    ) -> Self {
        let roles: std::collections::HashMap<_, _> = roles.into_iter().collect();
        Self {
            failures: Gcra::new(longest_refill(failed_auth.iter())),
            calls: Gcra::new(longest_refill(roles.values())),
            failed_auth,
            peer_header,
            roles,
        }
    }

    /// Who is on the other end of the connection, as a limit key.
    pub fn peer(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> String {
        if let Some(value) = self
            .peer_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
        {
            // `to_str` succeeded: visible ASCII, so any cut is a boundary.
            let value = value.trim();
            return value[..value.len().min(PEER_KEY_MAX)].to_owned();
        }
        extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr)
            .map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string())
    }

    /// `Ok` while `peer` may still fail authentication.
    pub fn admit_peer(&self, peer: &str) -> Result<(), tonic::Status> {
        let Some(quota) = self.failed_auth else {
            return Ok(());
        };
        self.failures.check(peer, quota).map_err(|wait| {
            tracing::debug!(%peer, "too many failed authentications from this peer");
            crate::layer::exhausted(
                "too many failed authentications from this address; retry later",
                wait,
            )
        })
    }

    /// Records that `peer`'s credentials did not verify (a key store that
    /// cannot answer is not the caller's failure).
    pub fn failed(&self, peer: &str, error: &crate::AuthError) {
        if let (Some(quota), crate::AuthError::Invalid(_)) = (self.failed_auth, error) {
            // Past the budget nothing is taken: the peer is refused
            // before checking until the rate gives it another try.
            let _ = self.failures.take(peer, quota);
        }
    }

    /// Takes one call from a JWT caller's budget, by its roles.
    pub fn take_call(&self, caller: &crate::Principal) -> Result<(), tonic::Status> {
        if self.roles.is_empty() {
            return Ok(());
        }
        let mut quota: Option<Quota> = None;
        for role in caller.roles.iter() {
            match self.roles.get(role) {
                None => return Ok(()),
                Some(q) if quota.is_none_or(|best| q.rate_per_sec > best.rate_per_sec) => {
                    quota = Some(*q);
                }
                Some(_) => {}
            }
        }
        let Some(quota) = quota else {
            // No roles at all: the policy refuses it anyway.
            return Ok(());
        };
        self.calls
            .take(&caller.subject, quota)
            .map_err(|wait| crate::layer::exhausted("caller rate limit reached; retry later", wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        let quota = Quota::per_second(10);
        let mut tat = 0;
        let now = 1_000 * MS;
        for _ in 0..10 {
            tat = decide(tat, now, quota).expect("within the burst");
        }
        let wait = decide(tat, now, quota).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(100));
        // One interval later one more passes, and only one.
        tat = decide(tat, now + 100 * MS, quota).expect("refilled one");
        assert!(decide(tat, now + 100 * MS, quota).is_err());
    }

    #[test]
    fn no_window_edge_admits_twice_the_rate() {
        // Whatever the phase, 2 × rate calls within 20 ms: at most
        // burst + rate × 20 ms pass.
        let quota = Quota::per_second(100);
        for phase in [0, 990 * MS, 999 * MS] {
            let mut tat = 0;
            let mut passed = 0;
            for i in 0..200u64 {
                if let Ok(next) = decide(tat, phase + i * MS / 10, quota) {
                    tat = next;
                    passed += 1;
                }
            }
            assert!(passed <= 102, "{passed} passed at phase {phase}");
        }
    }

    #[test]
    fn the_in_process_limiter_takes_per_key() {
        let gcra = Gcra::default();
        let quota = Quota {
            rate_per_sec: 1.0,
            burst: 3,
        };
        for _ in 0..3 {
            gcra.take("k", quota).expect("burst");
        }
        let wait = gcra.take("k", quota).expect_err("spent");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(gcra.take("other", quota).is_ok(), "per key");
        assert!(gcra.check("k", quota).is_err(), "checking sees it spent");
        assert!(gcra.check("unseen", quota).is_ok());
    }

    #[test]
    fn settings_quotas() {
        let zero = Quota::default();
        assert_eq!(zero.from_settings(), None, "rate 0: no limit");
        let half = Quota {
            rate_per_sec: 0.5,
            burst: 0,
        };
        assert_eq!(half.from_settings().map(|q| q.burst), Some(1));
        let set = Quota {
            rate_per_sec: 20.0,
            burst: 5,
        };
        assert_eq!(set.from_settings(), Some(set));
    }
}
