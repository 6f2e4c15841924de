//! Reading on Redis: a replica with no open streams reads no order or
//! payment events (only the short stream of user changes, for its cache);
//! the first stream starts the firehose reader without missing an event,
//! and the reader stops once the last stream is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt;
use mercato_activity::{ActivityError, ActivityEvent, ActivityFeed, EventKind};
use mercato_redis::Redis;
use mercato_testkit::{RecordingProxy, TcpProxy, redis_url, socket_of};
use uuid::Uuid;

fn redis_at(addr: SocketAddr, prefix: &str) -> Redis {
    Redis::open(&format!("redis://{addr}"), prefix, Duration::from_secs(2)).unwrap()
}

/// A replica reading Redis through a recording proxy, and a publisher
/// (another service) writing to the same prefix directly.
async fn replica_and_publisher() -> (RecordingProxy, ActivityFeed, ActivityFeed) {
    let proxy = RecordingProxy::start(socket_of(&redis_url())).await;
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let replica = ActivityFeed::redis(redis_at(proxy.addr, &prefix));
    let publisher = ActivityFeed::publisher(Some(redis_at(socket_of(&redis_url()), &prefix)));
    (proxy, replica, publisher)
}

fn order_event(user_id: &str, n: usize) -> ActivityEvent {
    ActivityEvent::now(user_id, EventKind::OrderConfirmed, [("n", n.to_string())])
}

async fn next_event(
    stream: &mut (impl futures_util::Stream<Item = Result<ActivityEvent, ActivityError>> + Unpin),
) -> ActivityEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("not lagged")
}

/// Every order publishes three events; a user replica with no stream open
/// used to read and decode every one of them (38 % of its CPU under an
/// order load) to find the few that change a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_streams_reads_no_order_events_yet_hears_user_changes() {
    let (proxy, replica, publisher) = replica_and_publisher().await;
    let mut changes = replica.listen_user_changes();
    // The changes reader reads from where the stream ended when it started:
    // changes published until it has heard one may have gone before that.
    let mut heard = false;
    for n in 0..25 {
        let change = ActivityEvent::now("ada", EventKind::UserUpdated, [("n", n.to_string())]);
        publisher.publish(change).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), changes.recv())
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "a user change reaches the replica's listeners");
    // Any other warm-up change that got through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while changes.try_recv().is_ok() {}

    let reads_before = proxy.occurrences(b"XREAD");
    for n in 0..30 {
        publisher.publish(order_event("ada", n)).await.unwrap();
    }
    let suspended = ActivityEvent::now("ada", EventKind::UserStatusChanged, [("n", "31")]);
    publisher.publish(suspended.clone()).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("the change within 5 s")
        .unwrap();
    assert_eq!(*heard, suspended, "the order events were not handed on");

    let reads = proxy.occurrences(b"XREAD") - reads_before;
    println!("30 order events and a user change: {reads} reads by the replica");
    assert!(reads <= 2, "one blocking read per user change: {reads}");
    assert_eq!(
        proxy.occurrences(b"activity:all"),
        0,
        "the firehose is not read while no stream is open"
    );
}

/// The first stream starts the firehose reader and is answered only once
/// the reader knows where the firehose ends, so an event published the
/// moment the stream is open reaches it; once the last stream is gone the
/// reader stops, and a new stream starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firehose_is_read_while_streams_are_open_and_nothing_falls_in_between() {
    let (proxy, replica, publisher) = replica_and_publisher().await;
    for round in 0..2 {
        let mut stream = Box::pin(replica.subscribe("bob".into(), None).await.unwrap());
        let sent = order_event("bob", round);
        publisher.publish(sent.clone()).await.unwrap();
        assert_eq!(next_event(&mut stream).await, sent, "round {round}");
        drop(stream);

        // The reader notices at its next read: an event wakes it.
        publisher.publish(order_event("carol", 100)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reads = proxy.occurrences(b"activity:all");
        for n in 0..10 {
            publisher.publish(order_event("carol", n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            proxy.occurrences(b"activity:all"),
            reads,
            "round {round}: the firehose reader stopped with the last stream"
        );
    }
}

/// A stream that cannot be served live is refused, not opened silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_refused_while_the_firehose_cannot_be_read() {
    let proxy = TcpProxy::start(socket_of(&redis_url())).await;
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let replica = ActivityFeed::redis(redis_at(proxy.addr, &prefix));
    proxy.cut();
    let started = tokio::time::Instant::now();
    let opened = replica.subscribe("dan".into(), None).await.map(drop);
    assert!(
        matches!(opened, Err(ActivityError::Unavailable(_))),
        "{opened:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Back: the next stream opens and follows.
    proxy.restore();
    let publisher = ActivityFeed::publisher(Some(redis_at(socket_of(&redis_url()), &prefix)));
    let mut stream = Box::pin(replica.subscribe("dan".into(), None).await.unwrap());
    let sent = order_event("dan", 1);
    publisher.publish(sent.clone()).await.unwrap();
    assert_eq!(next_event(&mut stream).await, sent);
}
