//! Cache-aside for GetUser: an in-process L1 (moka) in front of an optional
//! shared Redis tier, in front of the database.
//!
//! Staleness rules, which the tests check:
//! - Every write goes through [`UserCache::store`] with the row's new
//!   `version` (write-through). Both tiers keep the highest version they have
//!   seen and refuse an older one, so a slow reader that loaded the row
//!   before a write cannot put the old copy back afterwards. A read on the
//!   replica that made a write therefore never sees older data.
//! - If Redis fails during a write, the key is remembered as *suspect*: this
//!   replica bypasses Redis for it, and a repair task keeps trying to delete
//!   the (possibly older) Redis copy until Redis answers again, so other
//!   replicas fall through to the database instead of reading it.
//! - Other replicas drop their L1 copy when the `user.*` event of the write
//!   reaches them through the activity stream (milliseconds); the L1 TTL
//!   (default 5 s) bounds staleness if that event is lost, and the Redis TTL
//!   bounds it after a Redis partition during a write.
//! - Redis down ⇒ the Redis tier is skipped with a warning; requests succeed.

use std::{sync::Arc, time::Duration};

use mercato_redis::Redis;
use moka::{future::Cache, ops::compute::Op};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::domain::{User, UserId};

/// Stores `ARGV[1]:ARGV[2]` unless the key holds a version >= ARGV[1].
const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
";

/// Cache sizes and lifetimes.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Entries kept in the in-process tier.
    pub l1_capacity: u64,
    /// Lifetime of an L1 entry.
    pub l1_ttl: Duration,
    /// Lifetime of a Redis entry.
    pub redis_ttl: Duration,
}

/// Lookups by tier and result: `user_cache_requests_total{tier, result}`.
pub type CacheRequests = Family<Vec<(&'static str, &'static str)>, Counter>;

/// The two-tier user cache.
#[derive(Debug, Clone)]
pub struct UserCache {
    l1: Cache<String, Arc<User>>,
    redis: Option<Redis>,
    /// Keys whose Redis copy may be stale because a write-through failed.
    suspect: Cache<String, ()>,
    redis_ttl: Duration,
    requests: CacheRequests,
}

impl UserCache {
    /// A cache with the given tiers; `redis: None` is the monolith's L1-only mode.
    pub fn new(settings: &CacheSettings, redis: Option<Redis>, requests: CacheRequests) -> Self {
        Self {
            l1: Cache::builder()
                .max_capacity(settings.l1_capacity)
                .time_to_live(settings.l1_ttl)
                .build(),
            redis,
            suspect: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.redis_ttl)
                .build(),
            redis_ttl: settings.redis_ttl,
            requests,
        }
    }

    fn count(&self, tier: &'static str, result: &'static str) {
        // On the `cache.get` span the last tier asked wins: `l1 miss`
        // then `redis hit` reads as a Redis hit.
        let span = tracing::Span::current();
        span.record("cache.tier", tier);
        span.record("cache.result", result);
        self.requests
            .get_or_create(&vec![("tier", tier), ("result", result)])
            .inc();
    }

    /// The cached user, from L1 or Redis; `None` means "ask the database".
    #[tracing::instrument(name = "cache.get", skip_all, fields(cache.name = "users", cache.tier = tracing::field::Empty, cache.result = tracing::field::Empty))]
    pub async fn get(&self, id: &UserId) -> Option<Arc<User>> {
        if let Some(user) = self.l1.get(id.as_str()).await {
            self.count("l1", "hit");
            return Some(user);
        }
        self.count("l1", "miss");
        let redis = self.redis.as_ref()?;
        if self.suspect.contains_key(id.as_str()) {
            return None;
        }
        let key = redis.key(&format!("user:{}", id.as_str()));
        let raw: Option<String> = match redis
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await
        {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(error = %e, "user cache: redis read failed, bypassing");
                self.count("redis", "error");
                return None;
            }
        };
        let Some(user) = raw.as_deref().and_then(decode) else {
            self.count("redis", "miss");
            return None;
        };
        self.count("redis", "hit");
        let user = Arc::new(user);
        self.put_l1(user.clone()).await;
        Some(user)
    }

    /// Stores a copy read from or just written to the database, unless a
    /// newer one is cached already.
    pub async fn store(&self, user: &User) {
        let user = Arc::new(user.clone());
        self.put_l1(user.clone()).await;
        let Some(redis) = &self.redis else { return };
        let id = user.id.as_str().to_owned();
        let key = redis.key(&format!("user:{id}"));
        let payload = match serde_json::to_string(&*user) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "user cache: cannot encode user");
                return;
            }
        };
        let ttl_ms = u64::try_from(self.redis_ttl.as_millis()).unwrap_or(u64::MAX);
        let version = user.version;
        let stored = redis
            .run(|mut c| async move {
                redis::Script::new(SET_IF_NEWER)
                    .key(&key)
                    .arg(version)
                    .arg(payload)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        match stored {
            Ok(_) => self.suspect.invalidate(&id).await,
            Err(e) => {
                tracing::warn!(error = %e, user_id = %id, "user cache: redis write failed, bypassing redis for this user");
                self.suspect.insert(id.clone(), ()).await;
                tokio::spawn(repair(
                    redis.clone(),
                    self.suspect.clone(),
                    id,
                    self.redis_ttl,
                ));
            }
        }
    }

    /// Drops this replica's L1 copy (another replica changed the user).
    pub async fn evict_local(&self, user_id: &str) {
        self.l1.invalidate(user_id).await;
    }

    async fn put_l1(&self, user: Arc<User>) {
        let key = user.id.as_str().to_owned();
        self.l1
            .entry(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if entry.value().version >= user.version => Op::Nop,
                    _ => Op::Put(user),
                };
                std::future::ready(op)
            })
            .await;
    }
}

/// Deletes a Redis copy that a failed write-through may have left stale,
/// retrying with backoff; after `ttl` the copy has expired anyway.
async fn repair(redis: Redis, suspect: Cache<String, ()>, user_id: String, ttl: Duration) {
    let key = redis.key(&format!("user:{user_id}"));
    let give_up = tokio::time::Instant::now() + ttl;
    let mut delay = Duration::from_millis(100);
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(delay).await;
        let key = key.clone();
        let deleted = redis
            .run(
                |mut c| async move { redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await },
            )
            .await;
        if deleted.is_ok() {
            tracing::info!(user_id = %user_id, "user cache: stale redis copy removed");
            suspect.invalidate(&user_id).await;
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn decode(raw: &str) -> Option<User> {
    let (_version, json) = raw.split_once(':')?;
    match serde_json::from_str(json) {
        Ok(user) => Some(user),
        Err(e) => {
            tracing::warn!(error = %e, "user cache: undecodable entry ignored");
            None
        }
    }
}
