//! The shared (Redis) rate limiter against a real Redis: no window edge
//! admits a double burst, replicas share one budget, and the limit refills
//! at its rate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mercato_auth::api_keys::RateLimiter;
use mercato_platform::rate_limit::SharedRateLimiter;
use mercato_redis::Redis;

fn redis() -> Redis {
    let url =
        std::env::var("MERCATO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    Redis::open(
        &url,
        &format!("test:ratelimit:{nanos}:"),
        Duration::from_secs(2),
    )
    .expect("redis URL")
}

/// Sleeps until `ms` milliseconds into the current wall-clock second.
async fn until_ms_of_second(ms: u128) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let into = now % 1000;
    let wait = if into < ms {
        ms - into
    } else {
        1000 - into + ms
    };
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(wait).expect("under a second"),
    ))
    .await;
}

async fn passed(limiter: &SharedRateLimiter, id: &str, calls: usize) -> usize {
    let mut passed = 0;
    for _ in 0..calls {
        if limiter.take(id, 20).await.is_ok() {
            passed += 1;
        }
    }
    passed
}

/// A fixed one-second window let 20 calls through at the end of one second
/// and 20 more at the start of the next, 40 within a few milliseconds.
#[tokio::test]
async fn a_window_edge_admits_no_double_burst() {
    let limiter = SharedRateLimiter::new(Some(redis()));
    until_ms_of_second(960).await;
    let started = tokio::time::Instant::now();
    let before_edge = passed(&limiter, "edge", 20).await;
    until_ms_of_second(5).await;
    let after_edge = passed(&limiter, "edge", 20).await;
    let took = started.elapsed();
    // Within `took` at most the burst (20) plus 20/s × took may pass.
    let allowed = 20 + (took.as_secs_f64() * 20.0).ceil() as usize;
    assert_eq!(before_edge, 20, "the burst passes");
    assert!(
        before_edge + after_edge <= allowed,
        "{before_edge} + {after_edge} calls passed within {took:?} (at most {allowed})"
    );
}

#[tokio::test]
async fn replicas_share_one_budget_that_refills_at_the_rate() {
    let redis = redis();
    let a = SharedRateLimiter::new(Some(redis.clone()));
    let b = SharedRateLimiter::new(Some(redis));
    assert_eq!(passed(&a, "shared", 15).await, 15);
    assert_eq!(
        passed(&b, "shared", 15).await,
        5,
        "the other replica gets the rest"
    );
    let wait = b.take("shared", 20).await.expect_err("spent");
    assert!(wait <= Duration::from_millis(50), "one interval: {wait:?}");
    tokio::time::sleep(Duration::from_millis(260)).await;
    let refilled = passed(&a, "shared", 20).await;
    assert!(
        (4..=7).contains(&refilled),
        "about 5 refilled in 250 ms: {refilled}"
    );
    assert!(a.take("other", 20).await.is_ok(), "per key");
}
