//! The per-user activity bus: every service publishes what happens to a
//! user ([`ActivityEvent`]: `user.created`, `order.confirmed`,
//! `payment.captured`, ...), and the user service serves each user's events
//! as StreamUserActivity (replay, then live).
//!
//! Two backends with one behaviour:
//! - **in-process** (the monolith): the newest [`RETAINED_PER_USER`] events of
//!   each user in memory, lost on restart;
//! - **Redis Streams** (replicas): every event is appended atomically to the
//!   user's stream `activity:<user_id>` (capped at about
//!   [`RETAINED_PER_USER`] entries, kept 30 days after the last event) and to
//!   a shared firehose `activity:all` (capped at about 10 000, kept a day
//!   after the last event). Each replica
//!   runs one task that follows the firehose with a blocking XREAD on a
//!   connection of its own and fans events out in memory, so any replica
//!   serves any user's stream with one Redis reader however many clients
//!   are connected.
//!
//! A subscription starts listening *before* it reads the replay, then skips
//! live events it already replayed, so nothing falls in the gap between the
//! two. A subscriber that reads too slowly to keep up with the fan-out
//! buffer gets [`ActivityError::Lagged`] and should resume with
//! `from_time`. Dropping the stream (client gone) drops its receiver and
//! decrements `activity_stream_subscribers`: nothing is left behind.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures_util::Stream;
use mercato_redis::Redis;
use prometheus_client::metrics::gauge::Gauge;
use redis::{
    AsyncCommands,
    streams::{StreamId, StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

mod kind;

pub use kind::EventKind;

/// Something that happened to a user, in any service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityEvent {
    /// UUIDv7, unique per event.
    pub event_id: String,
    /// Whose activity this is.
    pub user_id: String,
    /// Dotted name of its [`EventKind`], e.g. `order.confirmed` (text, so
    /// kinds added by newer services pass through).
    pub event_type: String,
    /// Event-specific details (ids, statuses); never secrets.
    pub metadata: BTreeMap<String, String>,
    /// Epoch microseconds.
    pub timestamp_us: i64,
}

impl ActivityEvent {
    /// Its kind, if this build knows it.
    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_name(&self.event_type)
    }

    /// A new event happening now.
    pub fn now<K: Into<String>, V: Into<String>>(
        user_id: &str,
        kind: EventKind,
        metadata: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7().to_string(),
            user_id: user_id.to_owned(),
            event_type: kind.as_str().to_owned(),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            timestamp_us: now_us(),
        }
    }
}

/// The current time in epoch microseconds.
pub fn now_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// Why the feed could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    /// The backend (Redis) cannot be reached now.
    #[error("activity feed unavailable: {0}")]
    Unavailable(String),
    /// A subscriber read too slowly and missed events.
    #[error("activity stream subscriber fell behind")]
    Lagged,
}

/// Events kept per user for replay.
pub const RETAINED_PER_USER: usize = 1000;
const FIREHOSE_LEN: usize = 10_000;
/// In-memory fan-out buffer; a subscriber further behind than this lags.
const FANOUT_CAPACITY: usize = 1024;
/// Longest time the firehose reader blocks; also how soon it notices shutdown.
const BLOCK: Duration = Duration::from_secs(2);
/// Redis stream ids carry Redis's clock, events the writer's: replay reads a
/// little earlier than asked and filters by the event's own timestamp.
const CLOCK_SLACK_MS: i64 = 60_000;
const PER_USER_TTL_SECS: i64 = 30 * 24 * 3600;
/// The firehose only serves live fan-out; a day of silence lets it go.
const FIREHOSE_TTL_SECS: i64 = 24 * 3600;

/// Where events are stored.
#[derive(Debug)]
enum Backend {
    InProcess(Mutex<HashMap<String, VecDeque<Arc<ActivityEvent>>>>),
    Redis(Redis),
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    live: broadcast::Sender<Arc<ActivityEvent>>,
    subscribers: Gauge,
}

/// Publishes events and serves subscriptions; cheap to clone.
#[derive(Debug, Clone)]
pub struct ActivityFeed {
    inner: Arc<Inner>,
}

impl ActivityFeed {
    /// Redis Streams when a Redis handle is given, otherwise in-process.
    pub fn new(redis: Option<Redis>) -> Self {
        match redis {
            Some(redis) => Self::redis(redis),
            None => Self::in_process(),
        }
    }

    /// The monolith's in-memory feed.
    pub fn in_process() -> Self {
        Self::with_backend(Backend::InProcess(Mutex::default()))
    }

    /// A feed on Redis Streams; starts this replica's firehose reader, which
    /// stops by itself once the feed is dropped.
    pub fn redis(redis: Redis) -> Self {
        let feed = Self::with_backend(Backend::Redis(redis.clone()));
        tokio::spawn(follow_firehose(Arc::downgrade(&feed.inner), redis));
        feed
    }

    fn with_backend(backend: Backend) -> Self {
        let (live, _) = broadcast::channel(FANOUT_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                backend,
                live,
                subscribers: Gauge::default(),
            }),
        }
    }

    /// Open subscriptions on this replica, for `activity_stream_subscribers`.
    pub fn subscribers_gauge(&self) -> Gauge {
        self.inner.subscribers.clone()
    }

    /// Publishes and, on failure, logs instead of failing: callers publish
    /// after their write has committed, so the database stays the record and
    /// the feed is best-effort.
    pub async fn announce(&self, event: ActivityEvent) {
        let (user_id, event_type) = (event.user_id.clone(), event.event_type.clone());
        if let Err(e) = self.publish(event).await {
            tracing::warn!(error = %e, %user_id, %event_type, "activity event not published");
        }
    }

    /// True when other replicas see the same events (Redis backend).
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// Every event this replica sees, for in-process consumers (cache eviction).
    pub fn listen_all(&self) -> broadcast::Receiver<Arc<ActivityEvent>> {
        self.inner.live.subscribe()
    }

    /// Records an event and delivers it to live subscribers.
    pub async fn publish(&self, event: ActivityEvent) -> Result<(), ActivityError> {
        match &self.inner.backend {
            Backend::InProcess(store) => {
                let event = Arc::new(event);
                if let Ok(mut store) = store.lock() {
                    let queue = store.entry(event.user_id.clone()).or_default();
                    if queue.len() == RETAINED_PER_USER {
                        queue.pop_front();
                    }
                    queue.push_back(event.clone());
                }
                // No receivers is fine: nobody is watching.
                let _ = self.inner.live.send(event);
                Ok(())
            }
            Backend::Redis(redis) => {
                let json = serde_json::to_string(&event)
                    .map_err(|e| ActivityError::Unavailable(e.to_string()))?;
                let user_key = redis.key(&format!("activity:{}", event.user_id));
                let firehose = redis.key("activity:all");
                redis
                    .run(|mut c| async move {
                        redis::pipe()
                            .atomic()
                            .xadd_maxlen(
                                &user_key,
                                StreamMaxlen::Approx(RETAINED_PER_USER),
                                "*",
                                &[("event", &json)],
                            )
                            .ignore()
                            .expire(&user_key, PER_USER_TTL_SECS)
                            .ignore()
                            .xadd_maxlen(
                                &firehose,
                                StreamMaxlen::Approx(FIREHOSE_LEN),
                                "*",
                                &[("event", &json)],
                            )
                            .ignore()
                            .expire(&firehose, FIREHOSE_TTL_SECS)
                            .ignore()
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await
                    .map_err(|e| ActivityError::Unavailable(e.to_string()))
            }
        }
    }

    /// The user's retained events at or after `from_us` (if given), then
    /// live ones, as a stream that ends when the feed shuts down.
    pub async fn subscribe(
        &self,
        user_id: String,
        from_us: Option<i64>,
    ) -> Result<
        impl Stream<Item = Result<ActivityEvent, ActivityError>> + Send + 'static,
        ActivityError,
    > {
        // Listen first, replay second: see the module docs.
        let mut live = self.inner.live.subscribe();
        let guard = SubscriberGuard::new(self.inner.subscribers.clone());
        let replay = match from_us {
            Some(from_us) => self.replay(&user_id, from_us).await?,
            None => Vec::new(),
        };
        let replayed: HashSet<String> = replay.iter().map(|e| e.event_id.clone()).collect();
        Ok(async_stream::stream! {
            let _guard = guard;
            for event in replay {
                yield Ok(event);
            }
            loop {
                match live.recv().await {
                    Ok(event) if event.user_id == user_id && !replayed.contains(&event.event_id) => {
                        yield Ok((*event).clone());
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        yield Err(ActivityError::Lagged);
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    async fn replay(
        &self,
        user_id: &str,
        from_us: i64,
    ) -> Result<Vec<ActivityEvent>, ActivityError> {
        match &self.inner.backend {
            Backend::InProcess(store) => Ok(store
                .lock()
                .map(|store| {
                    store
                        .get(user_id)
                        .map(|q| {
                            q.iter()
                                .filter(|e| e.timestamp_us >= from_us)
                                .map(|e| (**e).clone())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .unwrap_or_default()),
            Backend::Redis(redis) => {
                let key = redis.key(&format!("activity:{user_id}"));
                let start = (from_us / 1000 - CLOCK_SLACK_MS).max(0).to_string();
                let reply: StreamRangeReply = redis
                    .run(|mut c| async move {
                        c.xrange_count(&key, start, "+", RETAINED_PER_USER).await
                    })
                    .await
                    .map_err(|e| ActivityError::Unavailable(e.to_string()))?;
                Ok(reply
                    .ids
                    .iter()
                    .filter_map(decode)
                    .filter(|e| e.timestamp_us >= from_us)
                    .collect())
            }
        }
    }
}

fn decode(entry: &StreamId) -> Option<ActivityEvent> {
    let json: String = entry.get("event")?;
    serde_json::from_str(&json)
        .inspect_err(
            |e| tracing::warn!(error = %e, id = %entry.id, "undecodable activity event skipped"),
        )
        .ok()
}

/// Keeps `activity_stream_subscribers` equal to the number of open streams.
#[derive(Debug)]
struct SubscriberGuard(Gauge);

impl SubscriberGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Follows `activity:all` from "now" and hands each event to this replica's
/// subscribers, reconnecting after failures; returns once the feed is gone.
async fn follow_firehose(feed: Weak<Inner>, redis: Redis) {
    let key = redis.key("activity:all");
    let mut connection = None;
    let mut last_id: Option<String> = None;
    let options = StreamReadOptions::default()
        .block(usize::try_from(BLOCK.as_millis()).unwrap_or(2000))
        .count(256);
    while feed.strong_count() > 0 {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match redis.dedicated_connection(BLOCK).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "activity firehose: redis unreachable, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let from = match &last_id {
            Some(id) => id.clone(),
            // Start at the newest entry: older ones are served by replay.
            None => match conn
                .xrevrange_count::<_, _, _, _, StreamRangeReply>(&key, "+", "-", 1)
                .await
            {
                Ok(reply) => last_id
                    .insert(
                        reply
                            .ids
                            .first()
                            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
                    )
                    .clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "activity firehose: cannot read position");
                    connection = None;
                    continue;
                }
            },
        };
        match conn
            .xread_options::<_, _, StreamReadReply>(&[&key], &[&from], &options)
            .await
        {
            Ok(reply) => {
                let Some(feed) = feed.upgrade() else { return };
                for entry in reply.keys.iter().flat_map(|k| &k.ids) {
                    last_id = Some(entry.id.clone());
                    if let Some(event) = decode(entry) {
                        let _ = feed.live.send(Arc::new(event));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "activity firehose: read failed, reconnecting");
                connection = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
