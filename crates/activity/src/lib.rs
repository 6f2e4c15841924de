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
//!   Events that change a user record (`user.*`, see
//!   [`EventKind::changes_user`]) also go to a short stream of their own,
//!   `activity:user-changes`.
//!
//! A replica of the user service reads Redis with two tasks, each a
//! blocking XREAD on a connection of its own:
//! - the **changes reader** follows `activity:user-changes` for as long as
//!   the feed lives and hands its events to
//!   [`ActivityFeed::listen_user_changes`] (the cache's evictions); under an
//!   order load it has nothing to read;
//! - the **firehose reader** follows `activity:all` and fans events out in
//!   memory, so any replica serves any user's stream with one Redis reader
//!   however many clients are connected. It runs only while this replica
//!   has a stream open (or an [`ActivityFeed::listen_all`] receiver): the
//!   first subscription starts it and waits until it knows where the
//!   firehose ends, and it stops once the last one is gone, so a replica
//!   serving no streams does not read every order's and payment's events.
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
use tokio::sync::{broadcast, mpsc, oneshot, watch};
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
/// Every event of every user (after the prefix).
const FIREHOSE_KEY: &str = "activity:all";
const FIREHOSE_LEN: usize = 10_000;
/// The events that change a user record.
const CHANGES_KEY: &str = "activity:user-changes";
/// Users change far less often than orders happen; this only has to cover
/// a reader's reconnection.
const CHANGES_LEN: usize = 1_000;
/// Events waiting for the Redis publisher; a publish beyond waits its turn.
const OUTBOX_CAPACITY: usize = 1024;
/// Most events one Redis transaction appends.
const MOST_PER_TRANSACTION: usize = 128;
/// Buffer of the all-events channel ([`ActivityFeed::listen_all`]) and of
/// the user-changes one ([`ActivityFeed::listen_user_changes`]).
const FANOUT_CAPACITY: usize = 1024;
/// Longest time the firehose reader blocks; also how soon it notices shutdown.
const BLOCK: Duration = Duration::from_secs(2);
/// Redis stream ids carry Redis's clock, events the writer's: replay reads a
/// little earlier than asked and filters by the event's own timestamp.
const CLOCK_SLACK_MS: i64 = 60_000;
const PER_USER_TTL_SECS: i64 = 30 * 24 * 3600;
/// The firehose and the user-changes stream only serve live fan-out; a day
/// of silence lets them go.
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
    /// Also for `activity:user-changes`.
    changes_user: bool,
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
    /// The events that change a user record.
    changes: broadcast::Sender<Arc<ActivityEvent>>,
    streams: Mutex<Streams>,
    subscribers: Gauge,
}

/// The open subscriptions, by user.
#[derive(Debug, Default)]
struct Streams {
    limits: StreamLimits,
    open: usize,
    users: HashMap<String, UserChannel>,
    /// While the firehose reader runs (Redis only): whether it knows where
    /// to read from, i.e. hands on every event published from now on.
    firehose: Option<watch::Receiver<bool>>,
}

#[derive(Debug)]
struct UserChannel {
    sender: broadcast::Sender<Arc<ActivityEvent>>,
    streams: usize,
}

impl Inner {
    /// Hands `event` to its user's streams and to [`ActivityFeed::listen_all`].
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

    /// Hands a user-changing event to [`ActivityFeed::listen_user_changes`].
    fn deliver_change(&self, event: Arc<ActivityEvent>) {
        let _ = self.changes.send(event);
    }

    /// Starts the firehose reader unless it runs (Redis feeds that follow);
    /// the answer turns true once it hands on every new event.
    fn follow_firehose(self: &Arc<Self>, streams: &mut Streams) -> Option<watch::Receiver<bool>> {
        let Backend::Redis { redis, .. } = &self.backend else {
            return None;
        };
        if !self.follows {
            return None;
        }
        if let Some(ready) = &streams.firehose {
            return Some(ready.clone());
        }
        let (known, ready) = watch::channel(false);
        streams.firehose = Some(ready.clone());
        tokio::spawn(follow(
            Arc::downgrade(self),
            redis.clone(),
            Reader::Firehose,
            Some(known),
        ));
        Some(ready)
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

    /// A feed on Redis Streams; starts this replica's changes reader, which
    /// stops by itself once the feed is dropped (the firehose reader starts
    /// with the first subscription: see the module docs).
    pub fn redis(redis: Redis) -> Self {
        let feed = Self::with_backend(Self::publishing_to(redis.clone()), true);
        tokio::spawn(follow(
            Arc::downgrade(&feed.inner),
            redis,
            Reader::Changes,
            None,
        ));
        feed
    }

    /// A feed for a service that only publishes (order, payment): on Redis
    /// it runs no reader, so other services' events do not wake it, and it
    /// serves no subscriptions (they fail as unavailable) —
    /// [`ActivityFeed::listen_all`] and
    /// [`ActivityFeed::listen_user_changes`] hear nothing. In-process as
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
        let (changes, _) = broadcast::channel(FANOUT_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                backend,
                follows,
                live,
                changes,
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

    /// Every event, from about now on, for in-process consumers. On Redis
    /// this keeps the firehose reader running while the receiver lives (it
    /// hears events from once the reader knows where the firehose ends).
    pub fn listen_all(&self) -> broadcast::Receiver<Arc<ActivityEvent>> {
        let receiver = self.inner.live.subscribe();
        if let Ok(mut streams) = self.inner.streams.lock() {
            self.inner.follow_firehose(&mut streams);
        }
        receiver
    }

    /// The events that change a user record (`user.*`), from any replica:
    /// what a cache of users must evict. On Redis they come from the
    /// changes reader, so order and payment events never reach it.
    pub fn listen_user_changes(&self) -> broadcast::Receiver<Arc<ActivityEvent>> {
        self.inner.changes.subscribe()
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
                if event.kind().is_some_and(EventKind::changes_user) {
                    self.inner.deliver_change(event.clone());
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
                    changes_user: event.kind().is_some_and(EventKind::changes_user),
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
        let (guard, mut live, firehose) = SubscriberGuard::open(&self.inner, &user_id)?;
        if let Some(mut known) = firehose {
            match tokio::time::timeout(BLOCK, known.wait_for(|known| *known)).await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(ActivityError::Unavailable(
                        "the activity firehose cannot be read".into(),
                    ));
                }
            }
        }
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

/// A stream's live events.
type Live = broadcast::Receiver<Arc<ActivityEvent>>;
/// Whether the firehose reader hands on every new event (None: no reader
/// to wait for).
type Ready = Option<watch::Receiver<bool>>;

/// One open stream: counted in its user's channel and the process total
/// (which `activity_stream_subscribers` shows) while it lives.
#[derive(Debug)]
struct SubscriberGuard {
    inner: Weak<Inner>,
    user_id: String,
}

impl SubscriberGuard {
    /// Opens a stream of `user_id`'s events if the caps allow, with the
    /// firehose reader's readiness on Redis.
    fn open(inner: &Arc<Inner>, user_id: &str) -> Result<(Self, Live, Ready), ActivityError> {
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
        let firehose = inner.follow_firehose(&mut streams);
        Ok((
            Self {
                inner: Arc::downgrade(inner),
                user_id: user_id.to_owned(),
            },
            receiver,
            firehose,
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
/// transaction: every event to its user's stream and to the firehose (and a
/// user-changing one to `activity:user-changes`), each stream's expiry
/// renewed once. Under load, the events of one transaction's round trip go
/// together in the next, so Redis and this process pay one round trip for
/// many events. Each publisher learns the outcome of its event's
/// transaction. Returns once the feed is gone.
async fn publish_in_batches(redis: Redis, mut outbox: mpsc::Receiver<Outgoing>) {
    let firehose = redis.key(FIREHOSE_KEY);
    let changes = redis.key(CHANGES_KEY);
    let mut batch = Vec::with_capacity(MOST_PER_TRANSACTION);
    while outbox.recv_many(&mut batch, MOST_PER_TRANSACTION).await > 0 {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut renewed = HashSet::new();
        for event in &batch {
            let fields = [("event", &event.json)];
            pipe.xadd_maxlen(
                &event.user_key,
                StreamMaxlen::Approx(RETAINED_PER_USER),
                "*",
                &fields,
            )
            .ignore()
            .xadd_maxlen(&firehose, StreamMaxlen::Approx(FIREHOSE_LEN), "*", &fields)
            .ignore();
            if renewed.insert(event.user_key.as_str()) {
                pipe.expire(&event.user_key, PER_USER_TTL_SECS).ignore();
            }
            if event.changes_user {
                pipe.xadd_maxlen(&changes, StreamMaxlen::Approx(CHANGES_LEN), "*", &fields)
                    .ignore();
                if renewed.insert(changes.as_str()) {
                    pipe.expire(&changes, FIREHOSE_TTL_SECS).ignore();
                }
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

/// The two Redis readers of a replica (see the module docs).
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// `activity:user-changes`, for as long as the feed lives.
    Changes,
    /// `activity:all`, while streams or `listen_all` receivers are open.
    Firehose,
}

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Self::Changes => "activity changes reader",
            Self::Firehose => "activity firehose reader",
        }
    }

    /// The stream it follows (before the prefix).
    fn key(self) -> &'static str {
        match self {
            Self::Changes => CHANGES_KEY,
            Self::Firehose => FIREHOSE_KEY,
        }
    }

    /// Whether to read on; a firehose reader nobody needs any more takes
    /// itself off the table here, under the same lock that starts one.
    fn goes_on(self, inner: &Inner) -> bool {
        match self {
            Self::Changes => true,
            Self::Firehose => {
                let Ok(mut streams) = inner.streams.lock() else {
                    return false;
                };
                if streams.open == 0 && inner.live.receiver_count() == 0 {
                    streams.firehose = None;
                    return false;
                }
                true
            }
        }
    }

    fn deliver(self, inner: &Inner, event: ActivityEvent) {
        match self {
            Self::Changes => inner.deliver_change(Arc::new(event)),
            Self::Firehose => inner.deliver(Arc::new(event)),
        }
    }
}

/// Follows `reader`'s stream from its newest entry, telling `known` once
/// it has that position, and hands each event on as `reader` does,
/// reconnecting after failures (from where it was); returns once the feed
/// is gone or `reader` has no one left to read for.
async fn follow(
    feed: Weak<Inner>,
    redis: Redis,
    reader: Reader,
    known: Option<watch::Sender<bool>>,
) {
    let key = redis.key(reader.key());
    let mut connection = None;
    let mut last_id: Option<String> = None;
    let options = StreamReadOptions::default()
        .block(usize::try_from(BLOCK.as_millis()).unwrap_or(2000))
        .count(256);
    while feed.upgrade().is_some_and(|inner| reader.goes_on(&inner)) {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match redis.dedicated_connection(BLOCK).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "{}: redis unreachable, retrying", reader.name());
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
                Ok(reply) => {
                    let newest = reply
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                    if let Some(known) = &known {
                        known.send_replace(true);
                    }
                    last_id.insert(newest).clone()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{}: cannot read position", reader.name());
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
                let Some(inner) = feed.upgrade() else { return };
                for entry in reply.keys.iter().flat_map(|k| &k.ids) {
                    last_id = Some(entry.id.clone());
                    if let Some(event) = decode(entry) {
                        reader.deliver(&inner, event);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{}: read failed, reconnecting", reader.name());
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
