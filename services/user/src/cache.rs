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
//!   reaches them through the activity stream (milliseconds), and every L1
//!   copy when their listener fell behind the stream (the events it missed
//!   could be anyone's); the L1 TTL
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
    l1: Cache<String, Arc<User>, foldhash::fast::RandomState>,
    redis: Option<Redis>,
    /// Keys whose Redis copy may be stale because a write-through failed.
    suspect: Cache<String, ()>,
    redis_ttl: Duration,
    counts: Counts,
}

/// What one lookup of a tier found.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    L1Hit,
    L1Miss,
    RedisHit,
    RedisMiss,
    RedisError,
}

impl Lookup {
    const ALL: [Self; 5] = [
        Self::L1Hit,
        Self::L1Miss,
        Self::RedisHit,
        Self::RedisMiss,
        Self::RedisError,
    ];

    /// Its `tier` and `result` labels.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::L1Hit => ("l1", "hit"),
            Self::L1Miss => ("l1", "miss"),
            Self::RedisHit => ("redis", "hit"),
            Self::RedisMiss => ("redis", "miss"),
            Self::RedisError => ("redis", "error"),
        }
    }
}

/// `user_cache_requests_total`'s series, resolved once (in the order of
/// [`Lookup::ALL`]): a lookup counts without building and hashing labels.
#[derive(Debug, Clone)]
struct Counts([Counter; 5]);

impl Counts {
    fn of(requests: &CacheRequests) -> Self {
        Self(Lookup::ALL.map(|lookup| {
            let (tier, result) = lookup.labels();
            requests
                .get_or_create(&vec![("tier", tier), ("result", result)])
                .clone()
        }))
    }
}

impl UserCache {
    /// A cache with the given tiers; `redis: None` is the monolith's L1-only mode.
    pub fn new(settings: &CacheSettings, redis: Option<Redis>, requests: CacheRequests) -> Self {
        Self {
            l1: Cache::builder()
                .max_capacity(settings.l1_capacity)
                .time_to_live(settings.l1_ttl)
                // Ids are the server's own UUIDs: a fast seeded hash will do.
                .build_with_hasher(foldhash::fast::RandomState::default()),
            redis,
            suspect: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.redis_ttl)
                .build(),
            redis_ttl: settings.redis_ttl,
            counts: Counts::of(&requests),
        }
    }

    fn count(&self, lookup: Lookup) {
        // On the `cache.get` span the last tier asked wins: `l1 miss`
        // then `redis hit` reads as a Redis hit.
        let (tier, result) = lookup.labels();
        let span = tracing::Span::current();
        span.record("cache.tier", tier);
        span.record("cache.result", result);
        self.counts.0[lookup as usize].inc();
    }

    /// The cached user, from L1 or Redis; `None` means "ask the database".
    #[tracing::instrument(name = "cache.get", skip_all, fields(cache.name = "users", cache.tier = tracing::field::Empty, cache.result = tracing::field::Empty))]
    pub async fn get(&self, id: &UserId) -> Option<Arc<User>> {
        if let Some(user) = self.l1.get(id.as_str()).await {
            self.count(Lookup::L1Hit);
            return Some(user);
        }
        self.count(Lookup::L1Miss);
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
                self.count(Lookup::RedisError);
                return None;
            }
        };
        let Some(user) = raw.as_deref().and_then(decode) else {
            self.count(Lookup::RedisMiss);
            return None;
        };
        self.count(Lookup::RedisHit);
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

    /// Drops every L1 copy of this replica (changes may have been missed).
    pub fn evict_all_local(&self) {
        self.l1.invalidate_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lookup counts into its own series.
    #[test]
    fn every_lookup_counts_into_the_series_of_its_labels() {
        let requests = CacheRequests::default();
        let counts = Counts::of(&requests);
        for (i, lookup) in Lookup::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                counts.0[lookup as usize].inc();
            }
        }
        for (i, lookup) in Lookup::ALL.into_iter().enumerate() {
            let (tier, result) = lookup.labels();
            let counted = requests
                .get_or_create(&vec![("tier", tier), ("result", result)])
                .get();
            assert_eq!(counted, i as u64 + 1, "{tier} {result}");
        }
    }
}
