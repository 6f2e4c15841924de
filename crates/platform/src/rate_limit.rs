//! Rate limits shared by every replica: GCRA ([`mercato_auth::limits`])
//! with each key's theoretical arrival time kept in Redis and updated by
//! one script, on Redis's own clock — so replicas whose clocks differ still
//! share one budget, and no window edge admits a double burst. Without
//! Redis (the monolith), or while it is unreachable, each process enforces
//! the limit on its own with the same algorithm, so the limit still holds
//! per replica.

use std::{sync::LazyLock, time::Duration};

use mercato_auth::{
    api_keys::{LocalRateLimiter, RateLimiter},
    limits::Quota,
};

use mercato_redis::Redis;

/// KEYS[1]: the key's TAT (µs on Redis's clock); ARGV[1]: µs between calls;
/// ARGV[2]: the burst tolerance in µs. Returns 0 when the call passes (and
/// records it), else the µs to wait. The TAT expires once it is in the past.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return 0
",
    )
});

/// See the module docs.
#[derive(Debug, Default)]
pub struct SharedRateLimiter {
    redis: Option<Redis>,
    local: LocalRateLimiter,
}

impl SharedRateLimiter {
    /// Counts in `redis` when given, otherwise in process.
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            redis,
            local: LocalRateLimiter::default(),
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for SharedRateLimiter {
    async fn take(&self, id: &str, rate_per_sec: u32) -> Result<(), Duration> {
        if rate_per_sec == 0 {
            return Ok(());
        }
        let Some(redis) = &self.redis else {
            return self.local.take_now(id, rate_per_sec);
        };
        // A burst of one second's calls, like the in-process limiter.
        let quota = Quota::per_second(rate_per_sec);
        let (interval_us, tolerance_us) = (quota.interval_ns() / 1000, quota.tolerance_ns() / 1000);
        let key = redis.key(&format!("ratelimit:{id}"));
        let waited = redis
            .run(|mut c| async move {
                GCRA.key(&key)
                    .arg(interval_us)
                    .arg(tolerance_us)
                    .invoke_async::<u64>(&mut c)
                    .await
            })
            .await;
        match waited {
            Ok(0) => Ok(()),
            Ok(wait_us) => Err(Duration::from_micros(wait_us)),
            Err(e) => {
                tracing::warn!(error = %e, "rate limit: redis unavailable, limiting in process");
                self.local.take_now(id, rate_per_sec)
            }
        }
    }
}
