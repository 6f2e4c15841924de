//! API key rate limits shared by every replica: a fixed one-second window
//! per key counted in Redis (`INCR` + `EXPIRE`, atomically). Without Redis
//! (the monolith), or while it is unreachable, each process enforces the
//! limit on its own with a token bucket, so the limit still holds per replica.

use std::time::Duration;

use mercato_auth::api_keys::{LocalRateLimiter, RateLimiter};

use mercato_redis::Redis;

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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let key = redis.key(&format!("ratelimit:{id}:{}", now_ms / 1000));
        let counted = redis
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .expire(&key, 2)
                    .ignore()
                    .query_async::<(i64,)>(&mut c)
                    .await
            })
            .await;
        match counted {
            Ok((count,)) if count <= i64::from(rate_per_sec) => Ok(()),
            Ok(_) => Err(Duration::from_millis(
                1000 - u64::try_from(now_ms % 1000).unwrap_or(0),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "rate limit: redis unavailable, limiting in process");
                self.local.take_now(id, rate_per_sec)
            }
        }
    }
}
