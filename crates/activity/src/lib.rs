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
//!   after the last event). One task per process publishes: the events
//!   waiting when its last transaction was answered go in the next one
//!   (up to 128), so under load many events cost Redis and the service one
//!   round trip; a publisher still waits for its event's transaction, so
//!   what it published is readable when [`ActivityFeed::publish`] returns.
//!   Each replica
//!   runs one task that follows the firehose with a blocking XREAD on a
//!   connection of its own and fans events out in memory, so any replica
//!   serves any user's stream with one Redis reader however many clients
//!   are connected.
//!
//! Fan-out is per user: each user with open streams has one channel, and an
//! event is sent only to its user's channel (and to [`ActivityFeed::listen_all`]
//! listeners such as the cache), so a stream is never woken — or made to lag —
//! by other users' events.
//!
//! Streams are capped ([`StreamLimits`]): per user and per process, a
//! subscription beyond either is refused with [`ActivityError::TooManyStreams`]
//! (RESOURCE_EXHAUSTED), so long-lived streams — which outlive the server's
//! request concurrency permit — cannot pile up without bound.
//!
//! A subscription starts listening *before* it reads the replay, then skips
//! live events it already replayed, so nothing falls in the gap between the
//! two. A subscriber that reads too slowly to keep up with its user's
//! buffer ([`PER_USER_BUFFER`] events) gets [`ActivityError::Lagged`] and should resume with
//! `from_time`. Dropping the stream (client gone) drops its receiver and
//! decrements `activity_stream_subscribers` (and the user's channel goes
//! with its last stream): nothing is left behind.

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
use tokio::sync::{broadcast, mpsc, oneshot};
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
    /// Opening the stream would pass a cap ([`StreamLimits`]).
    #[error("too many open activity streams {0}")]
    TooManyStreams(&'static str),
}

/// Caps on open subscriptions (user service settings
/// `activity_streams_per_user`, `activity_streams_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open streams of one user on this process.
    pub per_user: usize,
    /// Open streams on this process, all users together.
    pub total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_user: 8,
            total: 2_000,
        }
    }
}

/// Events buffered for one user's streams; a stream further behind lags.
pub const PER_USER_BUFFER: usize = 256;

/// Events kept per user for replay.
pub const RETAINED_PER_USER: usize = 1000;
const FIREHOSE_LEN: usize = 10_000;
/// Events waiting for the Redis publisher; a publish beyond waits its turn.
const OUTBOX_CAPACITY: usize = 1024;
/// Most events one Redis transaction appends.
const MOST_PER_TRANSACTION: usize = 128;
/// Buffer of the all-events channel ([`ActivityFeed::listen_all`]).
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
    Redis {
        redis: Redis,
        /// Events on their way to Redis ([`publish_in_batches`]).
        outbox: mpsc::Sender<Outgoing>,
    },
}

/// An event waiting for the Redis publisher, and who waits for it.
#[derive(Debug)]
struct Outgoing {
    user_key: String,
    json: String,
    published: oneshot::Sender<Result<(), String>>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// Whether this process hears every replica's events (false: a
    /// [`ActivityFeed::publisher`] on Redis).
    follows: bool,
    /// Every event, for in-process listeners.
    live: broadcast::Sender<Arc<ActivityEvent>>,
    streams: Mutex<Streams>,
    subscribers: Gauge,
}

/// The open subscriptions, by user.
#[derive(Debug, Default)]
struct Streams {
    limits: StreamLimits,
    open: usize,
    users: HashMap<String, UserChannel>,
}

#[derive(Debug)]
struct UserChannel {
    sender: broadcast::Sender<Arc<ActivityEvent>>,
    streams: usize,
}

impl Inner {
    /// Hands `event` to every in-process listener and to its user's streams.
    fn deliver(&self, event: Arc<ActivityEvent>) {
        if let Ok(streams) = self.streams.lock()
            && let Some(channel) = streams.users.get(&event.user_id)
        {
            // Fails only when every receiver is gone (streams closing).
            let _ = channel.sender.send(event.clone());
        }
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(event);
    }
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
        Self::with_backend(Backend::InProcess(Mutex::default()), true)
    }

    /// A feed on Redis Streams; starts this replica's firehose reader, which
    /// stops by itself once the feed is dropped.
    pub fn redis(redis: Redis) -> Self {
        let feed = Self::with_backend(Self::publishing_to(redis.clone()), true);
        tokio::spawn(follow_firehose(Arc::downgrade(&feed.inner), redis));
        feed
    }

    /// A feed for a service that only publishes (order, payment): on Redis
    /// it runs no firehose reader, so other services' events do not wake
    /// it, and it serves no subscriptions (they fail as unavailable) —
    /// [`ActivityFeed::listen_all`] hears nothing. In-process as
    /// [`ActivityFeed::new`].
    pub fn publisher(redis: Option<Redis>) -> Self {
        match redis {
            Some(redis) => Self::with_backend(Self::publishing_to(redis), false),
            None => Self::in_process(),
        }
    }

    /// The Redis backend and its publisher task, which ends once the feed
    /// (the outbox's only sender) is dropped.
    fn publishing_to(redis: Redis) -> Backend {
        let (outbox, pending) = mpsc::channel(OUTBOX_CAPACITY);
        tokio::spawn(publish_in_batches(redis.clone(), pending));
        Backend::Redis { redis, outbox }
    }

    fn with_backend(backend: Backend, follows: bool) -> Self {
        let (live, _) = broadcast::channel(FANOUT_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                backend,
                follows,
                live,
                streams: Mutex::default(),
                subscribers: Gauge::default(),
            }),
        }
    }

    /// Caps subscriptions from now on (streams already open stay).
    pub fn limit_streams(&self, limits: StreamLimits) {
        if let Ok(mut streams) = self.inner.streams.lock() {
            streams.limits = limits;
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
        matches!(self.inner.backend, Backend::Redis { .. })
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
                self.inner.deliver(event);
                Ok(())
            }
            Backend::Redis { redis, outbox } => {
                let json = serde_json::to_string(&event)
                    .map_err(|e| ActivityError::Unavailable(e.to_string()))?;
                let (published, outcome) = oneshot::channel();
                let outgoing = Outgoing {
                    user_key: redis.key(&format!("activity:{}", event.user_id)),
                    json,
                    published,
                };
                let gone = || ActivityError::Unavailable("the publisher has stopped".into());
                outbox.send(outgoing).await.map_err(|_| gone())?;
                outcome
                    .await
                    .map_err(|_| gone())?
                    .map_err(ActivityError::Unavailable)
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
        if !self.inner.follows {
            return Err(ActivityError::Unavailable(
                "this service only publishes activity".into(),
            ));
        }
        // Listen first, replay second: see the module docs.
        let (guard, mut live) = SubscriberGuard::open(&self.inner, &user_id)?;
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
                    Ok(event) if !replayed.contains(&event.event_id) => {
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
            Backend::Redis { redis, .. } => {
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

/// One open stream: counted in its user's channel and the process total
/// (which `activity_stream_subscribers` shows) while it lives.
#[derive(Debug)]
struct SubscriberGuard {
    inner: Weak<Inner>,
    user_id: String,
}

impl SubscriberGuard {
    /// Opens a stream of `user_id`'s events if the caps allow.
    fn open(
        inner: &Arc<Inner>,
        user_id: &str,
    ) -> Result<(Self, broadcast::Receiver<Arc<ActivityEvent>>), ActivityError> {
        let mut streams = inner
            .streams
            .lock()
            .map_err(|_| ActivityError::Unavailable("stream table poisoned".into()))?;
        let limits = streams.limits;
        if streams.open >= limits.total {
            return Err(ActivityError::TooManyStreams("on this server"));
        }
        if streams.users.get(user_id).map_or(0, |c| c.streams) >= limits.per_user {
            return Err(ActivityError::TooManyStreams("for this user"));
        }
        let channel = streams
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| UserChannel {
                sender: broadcast::channel(PER_USER_BUFFER).0,
                streams: 0,
            });
        channel.streams += 1;
        let receiver = channel.sender.subscribe();
        streams.open += 1;
        inner.subscribers.set(gauge_value(streams.open));
        Ok((
            Self {
                inner: Arc::downgrade(inner),
                user_id: user_id.to_owned(),
            },
            receiver,
        ))
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Ok(mut streams) = inner.streams.lock() else {
            return;
        };
        streams.open = streams.open.saturating_sub(1);
        inner.subscribers.set(gauge_value(streams.open));
        if let Some(channel) = streams.users.get_mut(&self.user_id) {
            channel.streams = channel.streams.saturating_sub(1);
            if channel.streams == 0 {
                streams.users.remove(&self.user_id);
            }
        }
    }
}

fn gauge_value(open: usize) -> i64 {
    i64::try_from(open).unwrap_or(i64::MAX)
}

/// Appends the outbox's events to Redis, as many as are waiting in one
/// transaction: every event to its user's stream and to the firehose, each
/// stream's expiry renewed once. Under load, the events of one transaction's
/// round trip go together in the next, so Redis and this process pay one
/// round trip for many events. Each publisher learns the outcome of its
/// event's transaction. Returns once the feed is gone.
async fn publish_in_batches(redis: Redis, mut outbox: mpsc::Receiver<Outgoing>) {
    let firehose = redis.key("activity:all");
    let mut batch = Vec::with_capacity(MOST_PER_TRANSACTION);
    while outbox.recv_many(&mut batch, MOST_PER_TRANSACTION).await > 0 {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut renewed = HashSet::new();
        for event in &batch {
            pipe.xadd_maxlen(
                &event.user_key,
                StreamMaxlen::Approx(RETAINED_PER_USER),
                "*",
                &[("event", &event.json)],
            )
            .ignore()
            .xadd_maxlen(
                &firehose,
                StreamMaxlen::Approx(FIREHOSE_LEN),
                "*",
                &[("event", &event.json)],
            )
            .ignore();
            if renewed.insert(event.user_key.as_str()) {
                pipe.expire(&event.user_key, PER_USER_TTL_SECS).ignore();
            }
        }
        pipe.expire(&firehose, FIREHOSE_TTL_SECS).ignore();
        let outcome = redis
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
            .map_err(|e| e.to_string());
        for event in batch.drain(..) {
            // A publisher that stopped waiting has nothing to hear.
            let _ = event.published.send(outcome.clone());
        }
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
                        feed.deliver(Arc::new(event));
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

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn event(user_id: &str) -> ActivityEvent {
        ActivityEvent::now(user_id, EventKind::UserCreated, [("n", "1")])
    }

    /// A stream is not handed other users' events: however many of them
    /// pass while it is idle, it does not lag and gets its own next event.
    #[tokio::test]
    async fn other_users_events_do_not_make_a_stream_lag() {
        let feed = ActivityFeed::in_process();
        let stream = feed.subscribe("alice".into(), None).await.expect("opens");
        let mut stream = Box::pin(stream);
        for _ in 0..2 * FANOUT_CAPACITY {
            feed.publish(event("bob")).await.expect("published");
        }
        let mine = event("alice");
        feed.publish(mine.clone()).await.expect("published");
        let got = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("an event")
            .expect("open");
        assert_eq!(got.expect("not lagged"), mine);
    }

    /// Caps per user and per process; a closed stream frees its place, and
    /// a user's channel goes with its last stream.
    #[tokio::test]
    async fn streams_are_capped_per_user_and_per_process() {
        let feed = ActivityFeed::in_process();
        let defaults = StreamLimits::default();
        let mut alice = Vec::new();
        for _ in 0..defaults.per_user {
            alice.push(
                feed.subscribe("alice".into(), None)
                    .await
                    .expect("within the cap"),
            );
        }
        assert!(matches!(
            feed.subscribe("alice".into(), None).await.map(drop),
            Err(ActivityError::TooManyStreams("for this user"))
        ));
        assert_eq!(feed.subscribers_gauge().get(), 8);
        alice.pop();
        let again = feed.subscribe("alice".into(), None).await.expect("freed");

        feed.limit_streams(StreamLimits {
            per_user: 8,
            total: 9,
        });
        let bob = feed.subscribe("bob".into(), None).await.expect("the 9th");
        assert!(matches!(
            feed.subscribe("carol".into(), None).await.map(drop),
            Err(ActivityError::TooManyStreams("on this server"))
        ));
        drop((alice, again, bob));
        assert_eq!(feed.subscribers_gauge().get(), 0);
        let streams = feed.inner.streams.lock().expect("lock");
        assert_eq!(
            (streams.open, streams.users.len()),
            (0, 0),
            "nothing left behind"
        );
    }
}
