//! The Redis handle of every mercato service.
//!
//! Redis, used only for things that make a service faster or shared across
//! replicas (caches, rate limits, activity streams) — never for data of
//! record. Therefore every call is bounded by a short timeout, the
//! connection is opened lazily (a service starts while Redis is down) and
//! re-established in the background, and callers treat a failure as "bypass
//! Redis", not as a failed request.
//!
//! All keys go through [`Redis::key`], which puts the configured prefix in
//! front, so several services, environments or tests share one Redis safely.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{
    AsyncConnectionConfig, Client, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};

use mercato_api::Secret;
use serde::{Deserialize, Serialize};

/// The Redis settings every service shares (flattened into its `Settings`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RedisSettings {
    /// `redis://…`, or empty for in-process equivalents (one replica only);
    /// a secret (it may carry the password).
    pub redis_url: Secret,
    /// Prepended to every key; services of one deployment share it so that
    /// their activity events meet in the same streams.
    pub redis_key_prefix: String,
    /// Longest wait for one Redis command before it is bypassed.
    pub redis_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            redis_url: Secret::default(),
            redis_key_prefix: "mercato:".into(),
            redis_timeout_ms: 250,
        }
    }
}

impl RedisSettings {
    /// A handle when a URL is set; `None` means in-process mode.
    pub fn open(&self) -> Result<Option<Redis>, RedisUnavailable> {
        if self.redis_url.is_empty() {
            return Ok(None);
        }
        if !(1..=60_000).contains(&self.redis_timeout_ms) {
            return Err(RedisUnavailable(
                "redis_timeout_ms must be between 1 and 60000".into(),
            ));
        }
        Redis::open(
            self.redis_url.expose(),
            &self.redis_key_prefix,
            Duration::from_millis(self.redis_timeout_ms),
        )
        .map(Some)
    }
}

/// A Redis call failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(String);

/// A lazily connected, self-healing Redis handle; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    /// Shared multiplexed connection for ordinary commands.
    manager: ConnectionManager,
    /// Kept to open dedicated connections for blocking commands (XREAD
    /// BLOCK would stall every other command on the shared connection).
    client: Client,
    /// Prepended to every key.
    prefix: String,
    /// Upper bound for one command, connection included.
    op_timeout: Duration,
    /// After a failure, calls fail at once until this instant, so a hung
    /// Redis costs each request nothing rather than `op_timeout`.
    backoff_until: Arc<Mutex<Option<Instant>>>,
}

/// How long Redis is skipped after a failed call.
const BACKOFF: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Prepares a handle for `url` without connecting; only a malformed URL fails.
    pub fn open(url: &str, prefix: &str, op_timeout: Duration) -> Result<Self, RedisUnavailable> {
        let client = Client::open(url).map_err(|e| RedisUnavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| RedisUnavailable(e.to_string()))?;
        Ok(Self {
            manager,
            client,
            prefix: prefix.to_owned(),
            op_timeout,
            backoff_until: Arc::default(),
        })
    }

    /// The full key for `name`: prefix + name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs commands on the shared connection, bounded by the op timeout.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.in_backoff() {
            return Err(RedisUnavailable("skipped after a recent failure".into()));
        }
        let (error, unreachable) =
            match tokio::time::timeout(self.op_timeout, f(self.manager.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => {
                    let unreachable = e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal();
                    (RedisUnavailable(e.to_string()), unreachable)
                }
                Err(_) => (
                    RedisUnavailable(format!("no answer within {:?}", self.op_timeout)),
                    true,
                ),
            };
        if unreachable && let Ok(mut until) = self.backoff_until.lock() {
            *until = Some(Instant::now() + BACKOFF);
        }
        Err(error)
    }

    fn in_backoff(&self) -> bool {
        self.backoff_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// Opens a connection of its own, for blocking reads. `block` is the
    /// longest BLOCK the caller will use; the response timeout allows for it.
    pub async fn dedicated_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, RedisUnavailable> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(block + self.op_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| RedisUnavailable(e.to_string()))
    }

    /// Whether Redis answers a PING now (for a readiness probe).
    pub async fn ping(&self) -> Result<(), String> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
