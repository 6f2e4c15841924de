//! StreamUserActivity: replay, then live events, and nothing left behind.

use std::time::{Duration, SystemTime};

use mercato_activity::{ActivityError, ActivityEvent, ActivityFeed, EventKind};
use mercato_proto::user::v1::{
    SetUserStatusRequest, StreamUserActivityRequest, UserActivityEvent, UserStatus,
};
use mercato_redis::Redis;
use prost_types::Timestamp;
use tonic::Streaming;

use crate::{
    crud::create,
    helpers::{Db, RedisMode, TestApp, TestDatabase, eventually},
};

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

async fn next(stream: &mut Streaming<UserActivityEvent>) -> UserActivityEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("event within 5 s")
        .expect("stream ok")
        .expect("stream still open")
}

async fn set_status(app: &mut TestApp, id: &str, status: UserStatus) {
    app.client
        .set_user_status(SetUserStatusRequest {
            user_id: id.into(),
            status: status.into(),
        })
        .await
        .unwrap();
}

async fn replay_then_live_then_disconnect(db: Db, redis: RedisMode) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, redis).await;
    let start = SystemTime::now() - Duration::from_secs(1);
    let user = create(&mut app, "stream@example.com", "Streamer").await;
    set_status(&mut app, &user.user_id, UserStatus::Suspended).await;
    let between = SystemTime::now();
    set_status(&mut app, &user.user_id, UserStatus::Active).await;

    let mut stream = app
        .client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: user.user_id.clone(),
            from_time: Some(timestamp(start)),
        })
        .await
        .unwrap()
        .into_inner();
    let replayed: Vec<_> = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ]
    .into_iter()
    .map(|e| {
        (
            e.event_type,
            e.metadata.get("status").cloned().unwrap_or_default(),
        )
    })
    .collect();
    assert_eq!(
        replayed,
        [
            ("user.created".to_owned(), String::new()),
            ("user.status_changed".to_owned(), "SUSPENDED".to_owned()),
            ("user.status_changed".to_owned(), "ACTIVE".to_owned()),
        ]
    );
    assert_eq!(app.metric("activity_stream_subscribers").await, Some(1.0));

    // Live: an event after the replay arrives, exactly once.
    set_status(&mut app, &user.user_id, UserStatus::Inactive).await;
    let live = next(&mut stream).await;
    assert_eq!(live.event_type, "user.status_changed");
    assert_eq!(live.metadata["status"], "INACTIVE");
    assert_eq!(live.user_id, user.user_id);
    assert!(!live.event_id.is_empty() && live.timestamp.is_some());

    // from_time in the middle replays only what came after it.
    let mut later = app
        .client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: user.user_id.clone(),
            from_time: Some(timestamp(between)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut later).await.metadata["status"], "ACTIVE");
    assert_eq!(next(&mut later).await.metadata["status"], "INACTIVE");

    // Another user's events are not delivered to this stream.
    let other = create(&mut app, "other@example.com", "Other").await;
    set_status(&mut app, &other.user_id, UserStatus::Suspended).await;
    set_status(&mut app, &user.user_id, UserStatus::Active).await;
    let event = next(&mut stream).await;
    assert_eq!(
        (event.user_id.as_str(), event.metadata["status"].as_str()),
        (user.user_id.as_str(), "ACTIVE")
    );

    // Clients leave: their subscriptions are gone.
    drop(stream);
    drop(later);
    eventually("subscriptions released", || async {
        app.metric("activity_stream_subscribers").await == Some(0.0)
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_stream_replays_follows_and_releases() {
    replay_then_live_then_disconnect(Db::Sqlite, RedisMode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_replays_follows_and_releases() {
    replay_then_live_then_disconnect(Db::Postgres, RedisMode::fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_streams_events_written_on_another() {
    let database = TestDatabase::create(Db::Postgres).await;
    let redis = RedisMode::fresh();
    let mut a = TestApp::spawn(&database, redis.clone()).await;
    let mut b = TestApp::spawn(&database, redis).await;
    let user = create(&mut a, "replica@example.com", "Replica").await;

    // Live only (no from_time): the stream starts empty and follows.
    let mut stream = b
        .client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: user.user_id.clone(),
            from_time: None,
        })
        .await
        .unwrap()
        .into_inner();
    set_status(&mut a, &user.user_id, UserStatus::Suspended).await;
    let event = next(&mut stream).await;
    assert_eq!(
        (event.event_type.as_str(), event.metadata["status"].as_str()),
        ("user.status_changed", "SUSPENDED")
    );
    drop(stream);
    a.shutdown().await;
    b.shutdown().await;
}

async fn open(
    app: &mut TestApp,
    user_id: &str,
) -> Result<Streaming<UserActivityEvent>, tonic::Status> {
    app.client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: user_id.into(),
            from_time: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn refused_over_the_cap(opened: Result<Streaming<UserActivityEvent>, tonic::Status>, scope: &str) {
    let Err(refused) = opened else {
        panic!("a stream opened past the cap ({scope})");
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains(scope), "{refused:?}");
}

/// Streams outlive the request concurrency permit, so they have caps of
/// their own: the shipped 8 per user, and the replica's total (set to 10
/// here); beyond either, RESOURCE_EXHAUSTED; a closed stream frees its
/// place; `activity_stream_subscribers` counts what is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_per_user_and_per_replica() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut app = TestApp::spawn_with(&database, RedisMode::InProcess, |s| {
        assert_eq!(s.activity_streams_per_user, 8, "the shipped cap");
        s.activity_streams_max = 10;
    })
    .await;
    let alice = create(&mut app, "alice@example.com", "Alice").await.user_id;
    let bob = create(&mut app, "bob@example.com", "Bob").await.user_id;
    let carol = create(&mut app, "carol@example.com", "Carol").await.user_id;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(open(&mut app, &alice).await.expect("within the user's cap"));
    }
    refused_over_the_cap(open(&mut app, &alice).await, "for this user");
    for _ in 0..2 {
        streams.push(
            open(&mut app, &bob)
                .await
                .expect("within the replica's cap"),
        );
    }
    refused_over_the_cap(open(&mut app, &carol).await, "on this server");
    assert_eq!(app.metric("activity_stream_subscribers").await, Some(10.0));

    // A client leaves: its place is free again, and the rest still follow.
    drop(streams.remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match open(&mut app, &carol).await {
            Ok(stream) => break stream,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "never freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    set_status(&mut app, &alice, UserStatus::Suspended).await;
    assert_eq!(next(&mut streams[0]).await.metadata["status"], "SUSPENDED");
    drop((streams, reopened));
    eventually("all released", || async {
        app.metric("activity_stream_subscribers").await == Some(0.0)
    })
    .await;
    app.shutdown().await;
}

/// The order and payment services publish through
/// [`ActivityFeed::publisher`]: no firehose reader of their own, so other
/// services' events never wake them — yet what they publish reaches the
/// user service's streams, and they serve no stream themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reaches_the_streams_it_does_not_serve() {
    let database = TestDatabase::create(Db::Postgres).await;
    let redis = RedisMode::fresh();
    let RedisMode::Url { url, prefix } = &redis else {
        unreachable!()
    };
    let publisher = ActivityFeed::publisher(Some(
        Redis::open(url, prefix, Duration::from_millis(500)).unwrap(),
    ));
    let mut app = TestApp::spawn(&database, redis.clone()).await;
    let user = create(&mut app, "published@example.com", "Published").await;
    let mut stream = open(&mut app, &user.user_id).await.unwrap();

    publisher
        .announce(ActivityEvent::now(
            &user.user_id,
            EventKind::OrderConfirmed,
            [("order_id", "order-1")],
        ))
        .await;
    let event = next(&mut stream).await;
    assert_eq!(
        (
            event.event_type.as_str(),
            event.metadata["order_id"].as_str()
        ),
        ("order.confirmed", "order-1")
    );
    assert!(matches!(
        publisher.subscribe(user.user_id.clone(), None).await.err(),
        Some(ActivityError::Unavailable(_))
    ));
    drop(stream);
    app.shutdown().await;
}
